//! Linearizability checking of key-value histories: the WGL algorithm (Wing & Gong's search
//! with Lowe's memoization), in the shape Porcupine uses.
//!
//! **Partitioning.** Keys are independent registers, so linearizability is P-compositional: the
//! history is split by key and each key's sub-history is checked on its own, in key order
//! (`BTreeMap`, so the verdict never depends on hashing). Each key gets its own search budget.
//! The first key (in key order) found not linearizable is reported; if none is, the first key
//! whose search ran out of budget gives [`Verdict::Unknown`].
//!
//! **Search.** A key's operations become call and return events sorted by time, held in a
//! doubly linked list (indices into `Vec`s). Walking the list from its head, the search tries
//! each call still in the list as the next linearization point: if the register model accepts
//! the operation's output from the current state, and the pair (set of operations linearized so
//! far, resulting state) has not been seen before, the call and its return are lifted out of the
//! list, the previous state is pushed on a stack, and the walk restarts at the head. Reaching a
//! return event means the operation it closes should already have been linearized: the search
//! backtracks (pops the stack, unlifts that call, and tries the next candidate after it). An
//! empty stack at that point proves the history not linearizable. Every loop iteration is one
//! step; a key that needs more than `budget_steps` steps gives up with [`Verdict::Unknown`].
//!
//! **Time ties.** An operation that returned at time `t` strictly precedes one called at the
//! same `t`: if `a.ret == b.call` then `a` must be linearized before `b` (they are not
//! concurrent); only `a.ret > b.call` (and `b.ret > a.call`) makes them overlap. Events at
//! an equal time are ordered: returns, then zero-length operations (`call == ret`, each call
//! immediately followed by its own return, by position in the history; two such operations at
//! the same instant are taken in history order), then calls. A `ret` earlier than its `call` is
//! clamped to `call`.
//!
//! **Pending operations.** An operation with `ret: None` (timeout, crash) has its return at
//! +infinity: it may take effect at any point after its call, or never. Its output is normally
//! `None`, and an absent output (pending or not) accepts any answer; a present output still
//! constrains where a pending operation may be placed, but never forces it to be placed. So the
//! search succeeds as soon as every *completed* operation is linearized: the pending ones left
//! over are the ones that never took effect (equivalently, took effect after everything else).

use std::collections::{BTreeMap, BTreeSet};

/// An operation a client invoked on the key-value store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvInput {
    /// Set `key` to `value`; answered with [`KvOutput::Ok`].
    Put {
        /// The key written.
        key: String,
        /// The value stored.
        value: String,
    },
    /// Read `key`; answered with [`KvOutput::Value`].
    Get {
        /// The key read.
        key: String,
    },
    /// Compare-and-swap: if `key`'s value equals `expected`, set it to `new` (`None` removes
    /// it); answered with [`KvOutput::CasResult`].
    Cas {
        /// The key updated.
        key: String,
        /// The value the key must hold for the swap to happen (`None`: absent).
        expected: Option<String>,
        /// The value stored on success (`None`: remove the key).
        new: Option<String>,
    },
    /// Remove `key`; answered with [`KvOutput::Ok`].
    Delete {
        /// The key removed.
        key: String,
    },
}

impl KvInput {
    /// The key this operation touches.
    #[must_use]
    pub fn key(&self) -> &str {
        match self {
            Self::Put { key, .. }
            | Self::Get { key }
            | Self::Cas { key, .. }
            | Self::Delete { key } => key,
        }
    }
}

/// What the store answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvOutput {
    /// A `Put` or `Delete` was applied.
    Ok,
    /// A `Get` read this value (`None`: the key was absent).
    Value(Option<String>),
    /// A `Cas` was answered.
    CasResult {
        /// Whether the swap happened.
        success: bool,
    },
}

/// One operation of a history: invoked at `call`, answered at `ret`.
///
/// Times are virtual, in any `u64` unit. An operation whose answer never came (timeout, crash) has `ret: None`: it may have
/// taken effect at any time after `call`, or never.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// The client that issued the operation (reporting only; the checker ignores it).
    pub client: u64,
    /// What was asked.
    pub input: KvInput,
    /// What was answered; `None` when no answer came (then any answer is allowed).
    pub output: Option<KvOutput>,
    /// When the operation was invoked.
    pub call: u64,
    /// When the answer arrived; `None` for a pending operation.
    pub ret: Option<u64>,
}

/// The result of [`check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every key's sub-history has a linearization.
    Linearizable,
    /// This key's sub-history has none.
    NotLinearizable {
        /// The first failing key, in key order.
        key: String,
        /// That key's operations, sorted by call time (history order among equal calls).
        ops: Vec<Operation>,
    },
    /// The search budget ran out on this key before an answer was found.
    Unknown {
        /// The first key, in key order, whose search ran out of budget.
        key: String,
        /// Why no answer was found.
        reason: String,
    },
}

/// Checks `history` for linearizability against a map of independent registers, spending at
/// most `budget_steps` search steps per key. See the module documentation for the rules.
#[must_use]
pub fn check(history: &[Operation], budget_steps: u64) -> Verdict {
    let mut partitions: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
    for op in history {
        partitions.entry(op.input.key()).or_default().push(op);
    }
    let mut first_unknown = None;
    for (key, ops) in &partitions {
        match check_partition(ops, budget_steps) {
            Outcome::Linearizable => {}
            Outcome::NotLinearizable => {
                let mut ops: Vec<Operation> = ops.iter().map(|op| (*op).clone()).collect();
                ops.sort_by_key(|op| op.call);
                return Verdict::NotLinearizable {
                    key: (*key).to_owned(),
                    ops,
                };
            }
            Outcome::OutOfBudget => {
                first_unknown.get_or_insert_with(|| Verdict::Unknown {
                    key: (*key).to_owned(),
                    reason: format!(
                        "search budget of {budget_steps} steps exceeded on {} operations",
                        ops.len()
                    ),
                });
            }
        }
    }
    first_unknown.unwrap_or(Verdict::Linearizable)
}

/// A register value as an interned id; `None` is the absent key.
type Value = Option<usize>;

/// An input with its values interned.
#[derive(Clone, Copy)]
enum Input {
    Put(usize),
    Delete,
    Get,
    Cas { expected: Value, new: Value },
}

/// An output with its values interned; `Any` when no answer came.
#[derive(Clone, Copy)]
enum Output {
    Any,
    Ok,
    Value(Value),
    Cas(bool),
}

/// The register model: the state after applying `input` to `state`, if the store could have
/// answered `output`.
fn step(state: Value, input: Input, output: Output) -> Option<Value> {
    match (input, output) {
        (Input::Put(v), Output::Any | Output::Ok) => Some(Some(v)),
        (Input::Delete, Output::Any | Output::Ok) => Some(None),
        (Input::Get, Output::Any) => Some(state),
        (Input::Get, Output::Value(seen)) if seen == state => Some(state),
        (Input::Cas { expected, new }, Output::Any | Output::Cas(_)) => {
            let success = state == expected;
            if matches!(output, Output::Cas(answered) if answered != success) {
                return None;
            }
            Some(if success { new } else { state })
        }
        _ => None,
    }
}

/// Interns value strings of one partition to small ids.
#[derive(Default)]
struct Interner<'a>(BTreeMap<&'a str, usize>);

impl<'a> Interner<'a> {
    fn id(&mut self, value: &'a str) -> usize {
        let next = self.0.len();
        *self.0.entry(value).or_insert(next)
    }

    fn opt(&mut self, value: Option<&'a String>) -> Value {
        value.map(|v| self.id(v))
    }
}

/// A growable set of operation indices.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Bitset(Vec<u64>);

impl Bitset {
    fn new(len: usize) -> Self {
        Self(vec![0; len.div_ceil(64)])
    }

    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }

    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

/// The answer for one key.
enum Outcome {
    Linearizable,
    NotLinearizable,
    OutOfBudget,
}

/// End of the linked list.
const NIL: usize = usize::MAX;

/// One key's operations with their values interned.
fn compact(ops: &[&Operation]) -> Vec<(Input, Output)> {
    let mut interner = Interner::default();
    ops.iter()
        .map(|op| {
            let input = match &op.input {
                KvInput::Put { value, .. } => Input::Put(interner.id(value)),
                KvInput::Get { .. } => Input::Get,
                KvInput::Cas { expected, new, .. } => Input::Cas {
                    expected: interner.opt(expected.as_ref()),
                    new: interner.opt(new.as_ref()),
                },
                KvInput::Delete { .. } => Input::Delete,
            };
            let output = match &op.output {
                None => Output::Any,
                Some(KvOutput::Ok) => Output::Ok,
                Some(KvOutput::Value(v)) => Output::Value(interner.opt(v.as_ref())),
                Some(KvOutput::CasResult { success }) => Output::Cas(*success),
            };
            (input, output)
        })
        .collect()
}

/// The call and return events of one key, sorted by time, as a doubly linked list over
/// indices. Node 0 is the head sentinel; `NIL` ends the list.
struct Events {
    next: Vec<usize>,
    prev: Vec<usize>,
    /// The operation of each node.
    op: Vec<usize>,
    /// Whether each node is a call (else a return).
    is_call: Vec<bool>,
    /// The return node of each operation.
    return_node: Vec<usize>,
}

impl Events {
    fn new(ops: &[&Operation]) -> Self {
        // Sort key: (infinite, time, rank, op, call first), rank 0 = return, 1 = zero-length
        // operation, 2 = call (see the module docs).
        let mut events = Vec::with_capacity(2 * ops.len());
        for (i, op) in ops.iter().enumerate() {
            match op.ret.map(|r| r.max(op.call)) {
                Some(ret) if ret == op.call => {
                    events.push(((false, ret, 1u8, i, 0u8), i, true));
                    events.push(((false, ret, 1, i, 1), i, false));
                }
                Some(ret) => {
                    events.push(((false, op.call, 2, i, 0), i, true));
                    events.push(((false, ret, 0, i, 0), i, false));
                }
                None => {
                    events.push(((false, op.call, 2, i, 0), i, true));
                    events.push(((true, 0, 0, i, 0), i, false));
                }
            }
        }
        events.sort_unstable_by_key(|e| e.0);
        let nodes = events.len() + 1;
        let mut list = Self {
            next: (1..=nodes).collect(),
            prev: (0..nodes).map(|n| n.wrapping_sub(1)).collect(),
            op: vec![0; nodes],
            is_call: vec![false; nodes],
            return_node: vec![NIL; ops.len()],
        };
        list.next[nodes - 1] = NIL;
        for (k, &(_, op, call)) in events.iter().enumerate() {
            list.op[k + 1] = op;
            list.is_call[k + 1] = call;
            if !call {
                list.return_node[op] = k + 1;
            }
        }
        list
    }

    /// Unlinks a call node and its return node.
    fn lift(&mut self, call: usize) {
        for node in [call, self.return_node[self.op[call]]] {
            self.next[self.prev[node]] = self.next[node];
            if self.next[node] != NIL {
                self.prev[self.next[node]] = self.prev[node];
            }
        }
    }

    /// Relinks what [`Events::lift`] unlinked (their own links were left intact).
    fn unlift(&mut self, call: usize) {
        for node in [self.return_node[self.op[call]], call] {
            self.next[self.prev[node]] = node;
            if self.next[node] != NIL {
                self.prev[self.next[node]] = node;
            }
        }
    }
}

/// Runs WGL on one key's operations.
fn check_partition(ops: &[&Operation], budget_steps: u64) -> Outcome {
    let compact = compact(ops);
    let mut list = Events::new(ops);
    let completed_total = ops.iter().filter(|op| op.ret.is_some()).count();
    let mut completed_done = 0;
    let mut state: Value = None;
    let mut linearized = Bitset::new(ops.len());
    let mut seen: BTreeSet<(Bitset, Value)> = BTreeSet::new();
    // (call node linearized, state before it)
    let mut stack: Vec<(usize, Value)> = Vec::new();
    let mut steps: u64 = 0;
    let mut entry = list.next[0];
    while completed_done < completed_total {
        steps += 1;
        if steps > budget_steps {
            return Outcome::OutOfBudget;
        }
        if entry != NIL && list.is_call[entry] {
            let op = list.op[entry];
            let (input, output) = compact[op];
            if let Some(new_state) = step(state, input, output) {
                linearized.set(op);
                if seen.insert((linearized.clone(), new_state)) {
                    stack.push((entry, state));
                    state = new_state;
                    if ops[op].ret.is_some() {
                        completed_done += 1;
                    }
                    list.lift(entry);
                    entry = list.next[0];
                    continue;
                }
                linearized.clear(op);
            }
            entry = list.next[entry];
        } else {
            // A return (or the end): its operation had to be linearized before. Backtrack.
            let Some((call, old_state)) = stack.pop() else {
                return Outcome::NotLinearizable;
            };
            let op = list.op[call];
            linearized.clear(op);
            if ops[op].ret.is_some() {
                completed_done -= 1;
            }
            state = old_state;
            list.unlift(call);
            entry = list.next[call];
        }
    }
    Outcome::Linearizable
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(input: KvInput, output: KvOutput, call: u64, ret: u64) -> Operation {
        Operation {
            client: 0,
            input,
            output: Some(output),
            call,
            ret: Some(ret),
        }
    }

    fn put(key: &str, value: &str, call: u64, ret: u64) -> Operation {
        let input = KvInput::Put {
            key: key.into(),
            value: value.into(),
        };
        op(input, KvOutput::Ok, call, ret)
    }

    fn get(key: &str, seen: Option<&str>, call: u64, ret: u64) -> Operation {
        let output = KvOutput::Value(seen.map(String::from));
        op(KvInput::Get { key: key.into() }, output, call, ret)
    }

    fn del(key: &str, call: u64, ret: u64) -> Operation {
        op(KvInput::Delete { key: key.into() }, KvOutput::Ok, call, ret)
    }

    fn cas(
        key: &str,
        expected: Option<&str>,
        new: Option<&str>,
        success: bool,
        call: u64,
        ret: u64,
    ) -> Operation {
        let input = KvInput::Cas {
            key: key.into(),
            expected: expected.map(String::from),
            new: new.map(String::from),
        };
        op(input, KvOutput::CasResult { success }, call, ret)
    }

    fn pending(mut op: Operation) -> Operation {
        op.output = None;
        op.ret = None;
        op
    }

    const BUDGET: u64 = 1_000_000;

    fn ok(history: &[Operation]) -> bool {
        match check(history, BUDGET) {
            Verdict::Linearizable => true,
            Verdict::NotLinearizable { .. } => false,
            Verdict::Unknown { key, reason } => panic!("unknown on {key}: {reason}"),
        }
    }

    #[test]
    fn empty_and_sequential_histories_are_linearizable() {
        assert!(ok(&[]));
        let h = [
            get("a", None, 0, 1),
            put("a", "1", 2, 3),
            get("a", Some("1"), 4, 5),
            put("a", "2", 6, 7),
            get("a", Some("2"), 8, 9),
            del("a", 10, 11),
            get("a", None, 12, 13),
        ];
        assert!(ok(&h));
    }

    #[test]
    fn concurrent_puts_let_a_get_see_either_value() {
        for seen in ["x", "y"] {
            assert!(ok(&[
                put("a", "x", 0, 10),
                put("a", "y", 1, 11),
                get("a", Some(seen), 12, 13)
            ]));
        }
        // A get overlapping both puts may also see the initial absence.
        assert!(ok(&[
            put("a", "x", 0, 10),
            put("a", "y", 1, 11),
            get("a", None, 5, 6)
        ]));
    }

    #[test]
    fn stale_read_after_completed_put_is_rejected() {
        let h = [
            put("a", "1", 0, 1),
            put("a", "2", 2, 3),
            get("a", Some("1"), 4, 5),
        ];
        assert!(!ok(&h));
    }

    #[test]
    fn return_at_the_call_time_of_another_operation_precedes_it() {
        // put returns at 5, get is called at 5: not concurrent, so the get must see the put.
        assert!(!ok(&[put("a", "1", 0, 5), get("a", None, 5, 6)]));
        assert!(ok(&[put("a", "1", 0, 5), get("a", None, 4, 6)]));
        // Zero-length operations obey the same rule.
        assert!(!ok(&[put("a", "1", 3, 3), get("a", None, 3, 7)]));
        assert!(ok(&[put("a", "1", 3, 3), get("a", Some("1"), 3, 3)]));
    }

    #[test]
    fn read_of_a_value_never_written_is_rejected() {
        assert!(!ok(&[put("a", "1", 0, 10), get("a", Some("ghost"), 2, 3)]));
    }

    #[test]
    fn cas_exclusivity() {
        let base = put("a", "0", 0, 1);
        let both = [
            base.clone(),
            cas("a", Some("0"), Some("1"), true, 2, 5),
            cas("a", Some("0"), Some("2"), true, 3, 6),
        ];
        assert!(!ok(&both));
        let one = [
            base.clone(),
            cas("a", Some("0"), Some("1"), true, 2, 5),
            cas("a", Some("0"), Some("2"), false, 3, 6),
            get("a", Some("1"), 7, 8),
        ];
        assert!(ok(&one));
        // CAS from absent, and CAS to absent.
        let absent = [
            cas("b", None, Some("x"), true, 0, 1),
            cas("b", Some("x"), None, true, 2, 3),
            get("b", None, 4, 5),
        ];
        assert!(ok(&absent));
        assert!(!ok(&[base, cas("a", Some("0"), Some("1"), false, 2, 3)]));
    }

    #[test]
    fn pending_put_may_apply_or_not_but_not_both() {
        let pre = [put("a", "1", 0, 1), pending(put("a", "2", 2, 0))];
        for seen in ["1", "2"] {
            let mut h = pre.to_vec();
            h.push(get("a", Some(seen), 5, 6));
            assert!(ok(&h), "seeing {seen}");
        }
        let mut flip = pre.to_vec();
        flip.extend([get("a", Some("2"), 5, 6), get("a", Some("1"), 7, 8)]);
        assert!(!ok(&flip));
        // Applying late is fine: first not seen, then seen.
        let mut late = pre.to_vec();
        late.extend([get("a", Some("1"), 5, 6), get("a", Some("2"), 7, 8)]);
        assert!(ok(&late));
        // A pending CAS takes effect (or not) with the outcome the state dictates.
        let mut cas_late = pre.to_vec();
        cas_late.extend([
            pending(cas("a", Some("1"), Some("3"), true, 3, 0)),
            get("a", Some("3"), 5, 6),
        ]);
        assert!(ok(&cas_late));
        cas_late.push(get("a", Some("1"), 7, 8));
        assert!(
            !ok(&cas_late),
            "nothing writes 1 again after the CAS replaced it"
        );
        // But not before its call.
        assert!(!ok(&[
            get("a", Some("2"), 0, 1),
            pending(put("a", "2", 2, 0))
        ]));
    }

    #[test]
    fn delete_then_get_sees_absence() {
        assert!(ok(&[
            put("a", "1", 0, 1),
            del("a", 2, 3),
            get("a", None, 4, 5)
        ]));
        assert!(!ok(&[
            put("a", "1", 0, 1),
            del("a", 2, 3),
            get("a", Some("1"), 4, 5)
        ]));
    }

    #[test]
    fn independent_keys_are_checked_apart_and_failure_names_the_key() {
        // Interleaved keys, each sub-history fine on its own.
        let good = [
            put("a", "1", 0, 10),
            put("b", "1", 0, 10),
            get("a", Some("1"), 11, 12),
            get("b", None, 1, 2),
        ];
        assert!(ok(&good));
        let mut bad = good.to_vec();
        bad.push(get("b", Some("ghost"), 20, 21));
        bad.push(put("c", "1", 0, 1));
        let Verdict::NotLinearizable { key, ops } = check(&bad, BUDGET) else {
            panic!("expected a violation")
        };
        assert_eq!(key, "b");
        assert_eq!(ops.len(), 3);
        assert!(ops.iter().all(|op| op.input.key() == "b"));
        assert!(ops.windows(2).all(|w| w[0].call <= w[1].call));
        // Several failing keys: the first in key order is named.
        bad.push(get("a", Some("ghost"), 30, 31));
        assert!(matches!(check(&bad, BUDGET), Verdict::NotLinearizable { key, .. } if key == "a"));
    }

    #[test]
    fn tiny_budget_gives_unknown_but_a_violation_elsewhere_wins() {
        let h = [
            put("a", "1", 0, 10),
            put("a", "2", 1, 11),
            get("a", Some("2"), 2, 12),
            get("a", Some("1"), 13, 14),
        ];
        assert!(matches!(check(&h, 1), Verdict::Unknown { key, .. } if key == "a"));
        assert!(ok(&h));
        // Key "a" needs at least one step per operation; refuting "b" takes two.
        let mut with_b = h.to_vec();
        with_b.push(get("b", Some("x"), 0, 1));
        assert!(matches!(check(&with_b, 2), Verdict::NotLinearizable { key, .. } if key == "b"));
        let mut with_c = h.to_vec();
        with_c.push(put("c", "x", 0, 1));
        assert!(matches!(check(&with_c, 2), Verdict::Unknown { key, .. } if key == "a"));
    }

    /// xorshift64: a tiny seeded PRNG.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    /// A random sequential execution of a real map, each operation then widened into an
    /// interval around its (distinct, increasing) linearization point.
    fn random_history(seed: u64, len: u64) -> Vec<Operation> {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let keys = ["k0", "k1", "k2"];
        let mut map: BTreeMap<&str, Option<String>> = BTreeMap::new();
        let mut pendings = 0;
        (0..len)
            .map(|i| {
                let key = keys[usize::try_from(rng.below(3)).expect("small")];
                let current = map.entry(key).or_default();
                let (input, output) = match rng.below(10) {
                    0..=2 => {
                        let value = format!("v{i}");
                        *current = Some(value.clone());
                        (
                            KvInput::Put {
                                key: key.into(),
                                value,
                            },
                            KvOutput::Ok,
                        )
                    }
                    3..=5 => (
                        KvInput::Get { key: key.into() },
                        KvOutput::Value(current.clone()),
                    ),
                    6..=8 => {
                        let expected = if rng.below(2) == 0 {
                            current.clone()
                        } else {
                            Some(format!("v{}", rng.below(i + 1)))
                        };
                        let new = (rng.below(4) != 0).then(|| format!("v{i}"));
                        let success = *current == expected;
                        if success {
                            current.clone_from(&new);
                        }
                        (
                            KvInput::Cas {
                                key: key.into(),
                                expected,
                                new,
                            },
                            KvOutput::CasResult { success },
                        )
                    }
                    _ => {
                        *current = None;
                        (KvInput::Delete { key: key.into() }, KvOutput::Ok)
                    }
                };
                let point = 1000 + 100 * i;
                let call = point - rng.below(250);
                let ret = point + rng.below(250);
                let op = Operation {
                    client: i % 4,
                    input,
                    output: Some(output),
                    call,
                    ret: Some(ret),
                };
                if pendings < 3 && rng.below(40) == 0 {
                    pendings += 1;
                    return pending(op);
                }
                op
            })
            .collect()
    }

    #[test]
    fn random_concurrent_histories_of_a_real_map_are_linearizable_until_mutated() {
        for seed in 1..=20 {
            let mut history = random_history(seed, 300);
            assert_eq!(
                check(&history, BUDGET),
                Verdict::Linearizable,
                "seed {seed}"
            );
            let victim = history
                .iter()
                .rposition(|op| matches!(op.input, KvInput::Get { .. }) && op.ret.is_some())
                .expect("300 operations include a completed get");
            history[victim].output = Some(KvOutput::Value(Some("never-written".into())));
            let Verdict::NotLinearizable { key, ops } = check(&history, BUDGET) else {
                panic!("seed {seed}: mutation not caught")
            };
            assert_eq!(key, history[victim].input.key(), "seed {seed}");
            assert!(ops.contains(&history[victim]));
        }
    }
}
