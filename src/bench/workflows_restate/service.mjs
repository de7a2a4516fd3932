// The Restate side of `vcos bench workflows` (src/bench/workflows.rs): one service, `bench`,
// with the two workflow shapes the bench measures on every side.
//
// - `sequential`: 10 `ctx.run` steps one after another, each returning its input (`{i}`):
//   the counterpart of v-COS's 10 `activity: {name: echo}` steps and of Temporal's 10
//   `execute_activity(echo)` calls.
// - `fanout`: 100 `ctx.run` steps started at once and joined with `RestatePromise.all`, as
//   the SDK requires for concurrent durable steps: the counterpart of a `parallel` block of
//   100 echo branches (join all) and of 100 activities under `asyncio.gather`.
//
// Every `ctx.run` result is journaled by the server (appended to its log, fsynced) before the
// SDK resolves the step's promise. The issue asks for "a TypeScript service"; node 20 does not
// run TypeScript without a compiler, so this is the same service in plain JavaScript (an ES
// module) against the same SDK: what runs is identical.
//
// Usage: node service.mjs PORT
import * as restate from "@restatedev/restate-sdk";

// SDK 1.17 calls `Promise.withResolvers` (node >= 22) when it serves a request; node 20 lacks
// it. The standard's semantics, defined before the first request comes.
if (typeof Promise.withResolvers !== "function") {
  Promise.withResolvers = function withResolvers() {
    let resolve;
    let reject;
    const promise = new this((res, rej) => {
      resolve = res;
      reject = rej;
    });
    return { promise, resolve, reject };
  };
}

/** Steps of the sequential workflow. */
const SEQUENTIAL_STEPS = 10;
/** Branches of the fan-out workflow. */
const FANOUT_BRANCHES = 100;

const bench = restate.service({
  name: "bench",
  handlers: {
    sequential: async (ctx, input) => {
      let last = null;
      for (let i = 0; i < SEQUENTIAL_STEPS; i++) {
        last = await ctx.run(`step-${i}`, async () => ({ i }));
      }
      return { steps: SEQUENTIAL_STEPS, last, input };
    },
    fanout: async (ctx, input) => {
      const branches = [];
      for (let i = 0; i < FANOUT_BRANCHES; i++) {
        branches.push(ctx.run(`branch-${i}`, async () => ({ i })));
      }
      const results = await restate.RestatePromise.all(branches);
      return { steps: results.length, input };
    },
  },
});

const port = Number(process.argv[2]);
if (!Number.isInteger(port) || port <= 0) {
  console.error("usage: node service.mjs PORT");
  process.exit(2);
}
// HTTP/2 (bidirectional streaming), as restate.serve sets it up.
const bound = await restate.serve({ services: [bench], port });
console.log(`bench service listening on ${bound}`);
