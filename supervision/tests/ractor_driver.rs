//! The ractor driver with real actors: restarts, ordered stops, escalation.
//!
//! Nothing here asserts speed: waits poll with a deadline of a few seconds.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, ActorStatus};
use vcos_supervision::{
    ChildDef, ChildSpec, Clock, Intensity, ManualClock, RestartType, Strategy, SupervisorActor,
    SupervisorArgs, SupervisorMsg,
};

const DEADLINE: Duration = Duration::from_secs(5);

type Log = Arc<Mutex<Vec<String>>>;

fn push(log: &Log, entry: String) {
    log.lock().expect("log lock").push(entry);
}

fn entries(log: &Log) -> Vec<String> {
    log.lock().expect("log lock").clone()
}

/// A child that logs its starts and graceful stops and fails on request.
struct Worker;

struct WorkerArgs {
    id: String,
    log: Log,
}

enum WorkerMsg {
    /// The handler returns an error.
    Fail,
    /// The handler panics.
    Panic,
    /// The handler never returns (until killed).
    Hang,
}

impl Actor for Worker {
    type Msg = WorkerMsg;
    type State = WorkerArgs;
    type Arguments = WorkerArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<WorkerMsg>,
        args: WorkerArgs,
    ) -> Result<WorkerArgs, ActorProcessingErr> {
        push(&args.log, format!("start:{}", args.id));
        Ok(args)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<WorkerMsg>,
        state: &mut WorkerArgs,
    ) -> Result<(), ActorProcessingErr> {
        push(&state.log, format!("stop:{}", state.id));
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<WorkerMsg>,
        message: WorkerMsg,
        state: &mut WorkerArgs,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            WorkerMsg::Fail => Err(format!("{} asked to fail", state.id).into()),
            WorkerMsg::Panic => panic!("{} asked to panic", state.id),
            WorkerMsg::Hang => {
                push(&state.log, format!("hang:{}", state.id));
                tokio::time::sleep(Duration::from_secs(3_600)).await;
                Ok(())
            }
        }
    }
}

/// A child whose start always fails.
struct Unstartable;

impl Actor for Unstartable {
    type Msg = ();
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _myself: ActorRef<()>, _args: ()) -> Result<(), ActorProcessingErr> {
        Err("cannot start".into())
    }
}

fn spec(id: &str, shutdown_timeout_ms: u64) -> ChildSpec<String> {
    ChildSpec {
        id: id.to_owned(),
        restart: RestartType::Permanent,
        shutdown_timeout_ms,
    }
}

fn worker(id: &str, log: &Log) -> ChildDef {
    let (id, log) = (id.to_owned(), Arc::clone(log));
    ChildDef::actor(spec(&id, 1_000), move || {
        (
            Worker,
            WorkerArgs {
                id: id.clone(),
                log: Arc::clone(&log),
            },
        )
    })
}

fn sup_args(
    name: &str,
    strategy: Strategy,
    max_restarts: u32,
    children: Vec<ChildDef>,
) -> SupervisorArgs {
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(0));
    SupervisorArgs {
        name: name.to_owned(),
        strategy,
        intensity: Intensity {
            max_restarts,
            period_ms: 60_000,
        },
        children,
        clock,
        on_escalate: None,
    }
}

async fn call<R: Send + 'static>(
    cell: &ActorCell,
    build: impl FnOnce(ractor::RpcReplyPort<R>) -> SupervisorMsg,
) -> R {
    match ractor::rpc::call(cell, build, Some(DEADLINE)).await {
        Ok(CallResult::Success(reply)) => reply,
        Ok(_) => panic!("supervisor did not answer in time"),
        Err(err) => panic!("supervisor is gone: {err}"),
    }
}

async fn which(sup: &ActorCell) -> Vec<(String, Option<ActorId>)> {
    call(sup, SupervisorMsg::WhichChildren).await
}

async fn child(sup: &ActorCell, id: &str) -> ActorCell {
    let id = id.to_owned();
    call(sup, |reply| SupervisorMsg::ChildCell(id, reply))
        .await
        .expect("child is running")
}

async fn tell(sup: &ActorCell, id: &str, message: WorkerMsg) {
    if child(sup, id).await.send_message(message).is_err() {
        panic!("child {id} refused the message");
    }
}

async fn eventually<F, Fut>(what: &str, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !probe().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn ids(children: &[(String, Option<ActorId>)]) -> Vec<ActorId> {
    children
        .iter()
        .map(|(_, actor)| actor.expect("every child runs"))
        .collect()
}

async fn shutdown(sup: ActorRef<SupervisorMsg>, join: tokio::task::JoinHandle<()>) {
    call(&sup.get_cell(), SupervisorMsg::Shutdown).await;
    tokio::time::timeout(DEADLINE, join)
        .await
        .expect("supervisor stops")
        .expect("supervisor task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_for_one_restarts_the_crashed_child_and_keeps_its_siblings() {
    let log = Log::default();
    let children = vec![worker("a", &log), worker("b", &log), worker("c", &log)];
    let args = sup_args("one", Strategy::OneForOne, 5, children);
    let (sup, join) = Actor::spawn(None, SupervisorActor, args)
        .await
        .expect("supervisor starts");
    let cell = sup.get_cell();
    let before = ids(&which(&cell).await);

    for (crash, round) in [(WorkerMsg::Fail, 1), (WorkerMsg::Panic, 2)] {
        let previous = ids(&which(&cell).await);
        tell(&cell, "b", crash).await;
        eventually("b restarted", || async {
            let now = which(&cell).await;
            now[1].1.is_some_and(|actor| actor != previous[1])
        })
        .await;
        let now = ids(&which(&cell).await);
        assert_eq!(now[0], before[0], "round {round}: a kept");
        assert_eq!(now[2], before[2], "round {round}: c kept");
    }
    assert_eq!(
        entries(&log),
        ["start:a", "start:b", "start:c", "start:b", "start:b"]
    );
    shutdown(sup, join).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_for_all_restarts_siblings_in_order_and_counts_one_restart() {
    let log = Log::default();
    let children = vec![worker("a", &log), worker("b", &log), worker("c", &log)];
    // One restart allowed: the siblings' stop exits must not count as more.
    let args = sup_args("all", Strategy::OneForAll, 1, children);
    let (sup, join) = Actor::spawn(None, SupervisorActor, args)
        .await
        .expect("supervisor starts");
    let cell = sup.get_cell();
    let before = ids(&which(&cell).await);

    tell(&cell, "b", WorkerMsg::Fail).await;
    eventually("all restarted", || async { entries(&log).len() == 8 }).await;
    assert_eq!(
        entries(&log),
        ["start:a", "start:b", "start:c", "stop:c", "stop:a", "start:a", "start:b", "start:c"]
    );
    // Supervision events are handled before messages, so this answer comes
    // after the stale exits of the stopped siblings were seen.
    let after = ids(&which(&cell).await);
    assert!(before.iter().zip(&after).all(|(old, new)| old != new));
    assert_eq!(sup.get_status(), ActorStatus::Running);
    shutdown(sup, join).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_supervisor_escalates_to_the_root_once() {
    let log = Log::default();
    let escalations = Log::default();
    let nested = sup_args(
        "nested",
        Strategy::OneForOne,
        1,
        vec![worker("crasher", &log)],
    );
    let nested_def = ChildDef::actor(spec("nested", 5_000), move || {
        (SupervisorActor, nested.clone())
    });
    let mut root = sup_args(
        "root",
        Strategy::OneForOne,
        0,
        vec![worker("steady", &log), nested_def],
    );
    let seen = Arc::clone(&escalations);
    root.on_escalate = Some(Arc::new(move |reason: String| push(&seen, reason)));
    let (root_ref, root_join) = Actor::spawn(None, SupervisorActor, root)
        .await
        .expect("root starts");

    let nested_cell = child(&root_ref.get_cell(), "nested").await;
    let first = child(&nested_cell, "crasher").await.get_id();
    tell(&nested_cell, "crasher", WorkerMsg::Fail).await;
    eventually("crasher restarted", || async {
        which(&nested_cell).await[0]
            .1
            .is_some_and(|actor| actor != first)
    })
    .await;
    tell(&nested_cell, "crasher", WorkerMsg::Panic).await;

    tokio::time::timeout(DEADLINE, root_join)
        .await
        .expect("root fails")
        .expect("root task");
    let escalations = entries(&escalations);
    assert_eq!(escalations.len(), 1, "{escalations:?}");
    assert!(escalations[0].contains("nested"), "{escalations:?}");
    assert_eq!(nested_cell.get_status(), ActorStatus::Stopped);
    assert_eq!(
        entries(&log),
        [
            "start:steady",
            "start:crasher",
            "start:crasher",
            "stop:steady"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_children_in_reverse_start_order() {
    let log = Log::default();
    let children = vec![worker("a", &log), worker("b", &log), worker("c", &log)];
    let args = sup_args("down", Strategy::RestForOne, 3, children);
    let (sup, join) = Actor::spawn(None, SupervisorActor, args)
        .await
        .expect("supervisor starts");
    shutdown(sup, join).await;
    assert_eq!(
        entries(&log),
        ["start:a", "start:b", "start:c", "stop:c", "stop:b", "stop:a"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_kills_a_child_that_overruns_its_timeout() {
    let log = Log::default();
    let (slow_id, slow_log) = ("slow".to_owned(), Arc::clone(&log));
    let slow = ChildDef::actor(spec("slow", 50), move || {
        (
            Worker,
            WorkerArgs {
                id: slow_id.clone(),
                log: Arc::clone(&slow_log),
            },
        )
    });
    let args = sup_args(
        "kill",
        Strategy::OneForOne,
        3,
        vec![worker("a", &log), slow],
    );
    let (sup, join) = Actor::spawn(None, SupervisorActor, args)
        .await
        .expect("supervisor starts");
    let slow_cell = child(&sup.get_cell(), "slow").await;
    tell(&sup.get_cell(), "slow", WorkerMsg::Hang).await;
    eventually("slow hangs", || async {
        entries(&log).contains(&"hang:slow".to_owned())
    })
    .await;
    shutdown(sup, join).await;
    assert_eq!(slow_cell.get_status(), ActorStatus::Stopped);
    // Killed children run no post_stop; the graceful one does.
    assert_eq!(
        entries(&log),
        ["start:a", "start:slow", "hang:slow", "stop:a"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_that_cannot_start_fails_the_supervisor_after_stopping_the_others() {
    let log = Log::default();
    let broken = ChildDef::actor(spec("broken", 1_000), || (Unstartable, ()));
    let children = vec![
        worker("a", &log),
        worker("b", &log),
        broken,
        worker("c", &log),
    ];
    let args = sup_args("broken", Strategy::OneForOne, 3, children);
    let started = Actor::spawn(None, SupervisorActor, args).await;
    let err = started.expect_err("supervisor fails to start");
    assert!(err.to_string().contains("broken"), "{err}");
    assert_eq!(entries(&log), ["start:a", "start:b", "stop:b", "stop:a"]);
}
