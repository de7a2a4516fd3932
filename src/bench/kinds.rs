//! The IMVU kinds of `vcos bench cluster`'s node-to-node figures, registered only by
//! `vcos up --bench-kinds` (a hidden flag: production nodes do not carry them).
//!
//! - `bench-echo`: the twin of the Erlang peer's gen_server: a count, `ping` adds one and
//!   answers it (call or cast), `get` answers it, `crash` panics (the restarts of
//!   `vcos bench local`, which hosts it in-process);
//! - `bench-driver`: the client. Told `asks` it keeps `concurrency` asks in flight to an echo
//!   until `n` were answered (each answer, through `on_reply`, sends the next ask); told `tells`
//!   it sends `window` tells and one `get` ask, and the next window when that answers, then
//!   asks `get` until the echo counted all `n` tells. It stamps the start and the end with the
//!   handler's clock ([`Context::unix_ms`]); the harness reads them with `status`.
//!
//! Both persist only at lifecycle transitions, like the Erlang processes that persist nothing:
//! what is measured is the messaging path, not canon writes. The HTTP facade only starts a run
//! and reads its result; every message measured goes IMVU → runtime → `ClusterRouter` → the
//! canon's TCP connection → the owner node → its IMVU, and the reply back.

use serde::{Deserialize, Serialize};
use vcos_actors::{ActorError, Context, Imvu, ImvuId, ImvuKey, Persistence};

/// `get` asks a driver sends, at most, after its last window before it declares tells lost.
pub(crate) const DRAIN_ASKS_MAX: u64 = 100_000;

/// The echo.
pub(crate) struct BenchEcho;

/// Messages to an echo.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum EchoMsg {
    /// Adds one; answers the count.
    Ping,
    /// Answers the count.
    Get,
    /// Panics: the supervisor restarts the echo from its last durable snapshot.
    Crash,
}

impl Imvu for BenchEcho {
    const KIND: &'static str = "bench-echo";
    type State = u64;
    type Msg = EchoMsg;
    type Reply = u64;

    fn genesis(&self) -> u64 {
        0
    }

    fn handle(&self, count: &mut u64, msg: EchoMsg, _ctx: &mut Context<'_>) -> u64 {
        match msg {
            EchoMsg::Ping => *count += 1,
            EchoMsg::Get => {}
            EchoMsg::Crash => panic!("bench-echo: crash asked for"),
        }
        *count
    }

    fn persistence(&self) -> Persistence {
        Persistence::LifecycleOnly
    }

    fn description(&self) -> &'static str {
        "bench only: a count; {op: ping} adds one, {op: get}, {op: crash} panics"
    }
}

/// The driver.
pub(crate) struct BenchDriver;

/// Messages to a driver.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum DriverMsg {
    /// `n` asks to echo `to`, `concurrency` in flight.
    Asks { to: u64, n: u64, concurrency: u64 },
    /// `n` tells to echo `to`, by windows of `window` each closed by a `get` ask.
    Tells { to: u64, n: u64, window: u64 },
    /// The last run's figures.
    Status,
}

/// What a driver is doing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Phase {
    /// No run in progress.
    #[default]
    Idle,
    /// Asks in flight.
    Asks,
    /// Reading the echo's count before the tells.
    TellBaseline,
    /// Waiting for the `get` that closes a window.
    TellWindow,
    /// All tells sent; asking `get` until the echo counted them all.
    TellDrain,
}

/// A driver's memory: the run in progress or the last one.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct DriverState {
    pub(crate) phase: Phase,
    pub(crate) to: u64,
    pub(crate) n: u64,
    pub(crate) window: u64,
    /// Asks sent (ask runs) or tells sent (tell runs).
    pub(crate) sent: u64,
    /// Asks answered (ask runs).
    pub(crate) answered: u64,
    pub(crate) errors: u64,
    pub(crate) last_error: Option<String>,
    /// The echo's count before the tells.
    pub(crate) base: u64,
    /// The ask whose answer a tell run waits for.
    pub(crate) pending: u64,
    pub(crate) drain_asks: u64,
    pub(crate) started_ms: u64,
    pub(crate) finished_ms: Option<u64>,
}

fn echo(ctx: &Context<'_>, id: u64) -> ImvuKey {
    ImvuKey { tenant: ctx.key().tenant, id: ImvuId(id) }
}

impl BenchDriver {
    fn finish(state: &mut DriverState, ctx: &Context<'_>, error: Option<String>) {
        if let Some(e) = error {
            state.errors += 1;
            state.last_error = Some(e);
        }
        state.finished_ms = Some(ctx.unix_ms());
        state.phase = Phase::Idle;
    }

    fn send_window(state: &mut DriverState, ctx: &mut Context<'_>) {
        let to = echo(ctx, state.to);
        let batch = state.window.min(state.n - state.sent);
        for _ in 0..batch {
            ctx.tell(to, serde_json::json!({"op": "ping"}));
        }
        state.sent += batch;
        state.pending = ctx.ask(to, serde_json::json!({"op": "get"}));
        state.phase = Phase::TellWindow;
    }
}

impl Imvu for BenchDriver {
    const KIND: &'static str = "bench-driver";
    type State = DriverState;
    type Msg = DriverMsg;
    type Reply = serde_json::Value;

    fn genesis(&self) -> DriverState {
        DriverState::default()
    }

    fn handle(&self, state: &mut DriverState, msg: DriverMsg, ctx: &mut Context<'_>) -> serde_json::Value {
        let start = |state: &mut DriverState, to: u64, n: u64, window: u64| {
            *state = DriverState { to, n, window, ..DriverState::default() };
        };
        match msg {
            DriverMsg::Status => serde_json::to_value(&*state).unwrap_or_default(),
            _ if state.phase != Phase::Idle => serde_json::json!({"busy": true}),
            DriverMsg::Asks { to, n, concurrency } => {
                start(state, to, n.max(1), 0);
                state.phase = Phase::Asks;
                state.started_ms = ctx.unix_ms();
                let target = echo(ctx, to);
                for _ in 0..concurrency.clamp(1, state.n) {
                    ctx.ask(target, serde_json::json!({"op": "ping"}));
                    state.sent += 1;
                }
                serde_json::json!({"started": true})
            }
            DriverMsg::Tells { to, n, window } => {
                start(state, to, n.max(1), window.max(1));
                state.phase = Phase::TellBaseline;
                state.pending = ctx.ask(echo(ctx, to), serde_json::json!({"op": "get"}));
                serde_json::json!({"started": true})
            }
        }
    }

    fn on_reply(&self, state: &mut DriverState, correlation: u64, reply: Result<serde_json::Value, ActorError>, ctx: &mut Context<'_>) {
        match state.phase {
            Phase::Idle => {}
            Phase::Asks => {
                state.answered += 1;
                if let Err(e) = reply {
                    state.errors += 1;
                    state.last_error = Some(format!("{}: {e}", e.code()));
                }
                if state.sent < state.n {
                    ctx.ask(echo(ctx, state.to), serde_json::json!({"op": "ping"}));
                    state.sent += 1;
                } else if state.answered >= state.n {
                    Self::finish(state, ctx, None);
                }
            }
            Phase::TellBaseline | Phase::TellWindow | Phase::TellDrain => {
                if correlation != state.pending {
                    return;
                }
                let count = match reply {
                    Ok(v) => v.as_u64().unwrap_or(0),
                    Err(e) => return Self::finish(state, ctx, Some(format!("{}: {e}", e.code()))),
                };
                if state.phase == Phase::TellBaseline {
                    state.base = count;
                    state.started_ms = ctx.unix_ms();
                    return Self::send_window(state, ctx);
                }
                if state.sent < state.n {
                    return Self::send_window(state, ctx);
                }
                if count.saturating_sub(state.base) >= state.n {
                    return Self::finish(state, ctx, None);
                }
                state.phase = Phase::TellDrain;
                state.drain_asks += 1;
                if state.drain_asks > DRAIN_ASKS_MAX {
                    let seen = count.saturating_sub(state.base);
                    return Self::finish(state, ctx, Some(format!("the echo counted {seen} of {} tells (tells lost)", state.n)));
                }
                state.pending = ctx.ask(echo(ctx, state.to), serde_json::json!({"op": "get"}));
            }
        }
    }

    fn persistence(&self) -> Persistence {
        Persistence::LifecycleOnly
    }

    fn description(&self) -> &'static str {
        "bench only: drives asks or tells to a bench-echo: {op: asks, to, n, concurrency} | {op: tells, to, n, window} | {op: status}"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vcos_actors::{Outgoing, TenantId};

    fn key() -> ImvuKey {
        ImvuKey { tenant: TenantId::new("t").expect("tenant"), id: ImvuId(1) }
    }

    fn asks_sent(ctx: &Context<'_>) -> usize {
        ctx.outgoing().iter().filter(|o| matches!(o, Outgoing::Send { correlation: Some(_), .. })).count()
    }

    #[test]
    fn asks_keep_the_concurrency_and_finish_after_n_answers() {
        let key = key();
        let driver = BenchDriver;
        let mut state = driver.genesis();
        let mut ctx = Context::for_test(&key, 1_000);
        driver.handle(&mut state, DriverMsg::Asks { to: 7, n: 3, concurrency: 2 }, &mut ctx);
        assert_eq!(asks_sent(&ctx), 2);
        assert_eq!(state.phase, Phase::Asks);
        let mut ctx = Context::for_test(&key, 1_001);
        driver.on_reply(&mut state, 1, Ok(serde_json::json!(1)), &mut ctx);
        assert_eq!(asks_sent(&ctx), 1, "one answer, one more ask");
        let mut ctx = Context::for_test(&key, 1_002);
        driver.on_reply(&mut state, 2, Ok(serde_json::json!(2)), &mut ctx);
        assert_eq!(asks_sent(&ctx), 0);
        assert_eq!(state.finished_ms, None);
        let mut ctx = Context::for_test(&key, 1_005);
        driver.on_reply(&mut state, 3, Ok(serde_json::json!(3)), &mut ctx);
        assert_eq!(state.finished_ms, Some(1_005));
        assert_eq!((state.answered, state.errors, state.phase), (3, 0, Phase::Idle));
    }

    #[test]
    fn tells_go_by_windows_and_finish_when_the_echo_counted_them() {
        let key = key();
        let driver = BenchDriver;
        let mut state = driver.genesis();
        let mut ctx = Context::for_test(&key, 10);
        driver.handle(&mut state, DriverMsg::Tells { to: 7, n: 5, window: 3 }, &mut ctx);
        let baseline = state.pending;
        let mut ctx = Context::for_test(&key, 20);
        driver.on_reply(&mut state, baseline, Ok(serde_json::json!(100)), &mut ctx);
        assert_eq!((state.base, state.sent, state.started_ms), (100, 3, 20));
        assert_eq!(ctx.outgoing().len(), 4, "three tells and the closing ask");
        let first = state.pending;
        let mut ctx = Context::for_test(&key, 21);
        driver.on_reply(&mut state, first, Ok(serde_json::json!(103)), &mut ctx);
        assert_eq!((state.sent, ctx.outgoing().len()), (5, 3), "the last window holds two tells");
        // The closing ask overtook a tell: the driver asks again.
        let last = state.pending;
        let mut ctx = Context::for_test(&key, 22);
        driver.on_reply(&mut state, last, Ok(serde_json::json!(104)), &mut ctx);
        assert_eq!(state.phase, Phase::TellDrain);
        let drain = state.pending;
        let mut ctx = Context::for_test(&key, 23);
        driver.on_reply(&mut state, drain, Ok(serde_json::json!(105)), &mut ctx);
        assert_eq!((state.finished_ms, state.errors), (Some(23), 0));
    }

    #[test]
    fn a_busy_driver_refuses_a_second_run() {
        let key = key();
        let driver = BenchDriver;
        let mut state = driver.genesis();
        let mut ctx = Context::for_test(&key, 1);
        driver.handle(&mut state, DriverMsg::Asks { to: 7, n: 10, concurrency: 1 }, &mut ctx);
        let reply = driver.handle(&mut state, DriverMsg::Tells { to: 7, n: 10, window: 2 }, &mut ctx);
        assert_eq!(reply, serde_json::json!({"busy": true}));
        assert_eq!(state.phase, Phase::Asks);
    }
}
