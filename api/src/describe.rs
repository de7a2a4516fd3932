//! What every metric of the node means: the `# HELP` line of each family on `/metrics`
//! (Prometheus tooling, `promtool check metrics` among it, wants one per family).
//!
//! One table for the whole node, since the recorder is process-wide and metrics are emitted
//! by every crate; a test renders `/metrics` after traffic and fails on a family without help.

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

/// The kind of a metric.
#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram(Unit),
}

use Kind::{Counter, Gauge, Histogram};

/// Every metric the node emits: kind, name, help.
const METRICS: &[(Kind, &str, &str)] = &[
    (Counter, crate::HTTP_REQUESTS_METRIC, "HTTP requests served, by method, route template and status."),
    (Histogram(Unit::Seconds), crate::HTTP_DURATION_METRIC, "HTTP request latency, by method, route template and status."),
    (
        Histogram(Unit::Seconds),
        crate::HTTP_AUTH_RESOLUTION_METRIC,
        "Time to resolve an admitted keyed request's caller: key, tenant scope, role, tenant policy and rate-limit admission.",
    ),
    (Counter, "vcos_usage_dropped_total", "Usage totals dropped unwritten: too many waited (the canon unavailable for long), or their tenant was erased."),
    (Counter, "vcos_http_unparsable_total", "Requests hyper could not parse (request line over 64 KiB, header section too large, not HTTP), answered with a JSON error."),
    (Counter, "vcos_quota_refusals_total", "Requests refused because a tenant quota was used up, by quota (messages_per_day, canon_bytes_stored)."),
    (Histogram(Unit::Seconds), "vcos_tenant_storage_measure_seconds", "Time one measurement of every tenant's canon bytes took on this node (a full read of its replica; the next waits 20 times as long, a minute at least)."),
    (Counter, "vcos_usage_alerts_total", "Tenant usage alerts recorded (once per tenant, quota, period and threshold in the region), by quota and percent."),
    (Counter, "vcos_erasures_total", "Tenant erasures, by outcome: fenced (accepted, nothing of the tenant can be written) and completed (its records deleted)."),
    (Counter, "vcos_erasure_records_deleted_total", "Canon records deleted by tenant erasures."),
    (Counter, "vcos_tenants_forgotten_total", "Tenants this node let go of because they were erased (here or on another node)."),
    (Counter, "vcos_audit_records_total", "Audit records appended to the canon."),
    (Counter, "vcos_audit_flushes_total", "Flushes of waiting audit records."),
    (Counter, "vcos_audit_dropped_total", "Audit records dropped: too many waited to be written, or their tenant was erased."),
    (Counter, "vcos_http_throttled_total", "Requests refused with 429 over a tenant's rate or concurrency limit, or an address's failed authentications, by kind."),
    (Counter, "vcos_http_auth_refusals_total", "HTTP requests refused for want of a valid key (401) or of a right (403), by code."),
    (Counter, "vcos_activations_total", "IMVUs activated from canon (created or reloaded)."),
    (Counter, "vcos_passivations_total", "IMVUs passivated after being idle."),
    (Gauge, "vcos_imvus_resident", "IMVUs resident in memory on this node."),
    (Counter, "vcos_messages_total", "Messages handled by IMVUs on this node."),
    (Counter, "vcos_imvu_crashes_total", "IMVU handler panics caught by their shard."),
    (Counter, "vcos_imvu_fenced_total", "IMVU commits refused because the bucket's lease moved (fencing)."),
    (Counter, "vcos_imvu_poisoned_total", "IMVUs evicted after a failed commit (reloaded from canon on the next message)."),
    (Counter, "vcos_imvu_once_repeats_total", "Idempotent asks sent again and answered from their record, without running the handler."),
    (Counter, "vcos_imvu_commits_joined_total", "Handler commits that joined the same IMVU's commit of the same shard wake (one snapshot written for several messages)."),
    (Histogram(Unit::Seconds), "vcos_workflow_step_seconds", "Workflow steps, from first asked to done (retries and waits included), by step kind."),
    (Counter, "vcos_workflow_step_retries_total", "Workflow step attempts that failed and were retried, by step kind."),
    (Counter, "vcos_workflow_step_failures_total", "Workflow steps that failed for good, by step kind."),
    (Counter, "vcos_workflows_finished_total", "Workflow runs ended, by workflow (definition@version or Rust name) and status."),
    (Counter, "vcos_activity_calls_total", "Activity calls, by activity and outcome."),
    (Counter, "vcos_restarts_total", "Restarts decided by supervisors."),
    (Counter, "vcos_lifecycle_transitions_total", "Lifecycle transitions, by transition and outcome."),
    (Counter, "vcos_handshake_refusals_total", "Transitions refused by the 55-45-17 handshake, by stage."),
    (Counter, "vcos_timers_dropped_total", "IMVU timers dropped (over the per-IMVU bound, or the IMVU gone)."),
    (Counter, "vcos_id_reserve_conflicts_total", "Id block reservations retried after another node reserved first."),
    (Counter, "vcos_swarm_items_completed_total", "Swarm work items completed and credited."),
    (Counter, "vcos_swarm_coordinators_fenced_total", "Swarm coordinator writes refused because its bucket moved."),
    (Counter, "vcos_canon_commits_total", "Commits applied to the canon by this node's store."),
    (Counter, "vcos_canon_fsyncs_total", "fsyncs of the canon's log on this node."),
    (Counter, "vcos_canon_early_appends_total", "AppendEntries a leader sent a voter before its own fsync (early replication)."),
    (Histogram(Unit::Count), "vcos_canon_group_commit_size", "Commits per canon group commit (one Raft entry)."),
    (Counter, "vcos_canon_unavailable_total", "Canon requests that ended without a quorum (503)."),
    (Counter, "vcos_canon_members_not_promoted_total", "Nodes added as voters that stayed learners."),
    (Counter, "vcos_canon_frames_rejected_total", "Canon frames refused, by reason (corrupt, another cluster, wrong node, ...)."),
    (Counter, "vcos_canon_auth_refused_total", "Canon connections refused in the cluster-secret handshake, by reason."),
    (Counter, "vcos_cluster_requests_total", "IMVU requests routed by placement, by outcome."),
    (Counter, "vcos_cluster_remote_rejected_total", "Requests from other nodes refused (malformed, hop limit, not the owner)."),
    (Counter, "vcos_cluster_forwards_overtaken_total", "Forwarded requests answered by a newer owner first."),
    (Counter, "vcos_cluster_buckets_gained_total", "IMVU buckets this node came to hold."),
    (Counter, "vcos_cluster_buckets_lost_total", "IMVU buckets this node stopped holding."),
    (Gauge, "vcos_cluster_buckets_served", "IMVU buckets this node can prove it holds now."),
    (Counter, "vcos_cluster_link_batches_total", "Batches of messages between IMVUs sent to other nodes."),
    (Counter, "vcos_cluster_link_items_total", "Messages between IMVUs sent in batches."),
    (Counter, "vcos_cluster_link_onward_total", "Messages between IMVUs passed on to another owner."),
    (Counter, "vcos_cluster_link_refused_total", "Messages between IMVUs refused at a full queue."),
    (Counter, "vcos_cluster_link_rerouted_total", "Messages between IMVUs re-sent on the slow path after a batch was not delivered."),
    (Counter, "vcos_cluster_link_unknown_total", "Messages between IMVUs in batches whose delivery is unknown."),
    (Counter, "vcos_cluster_routed_refused_total", "Messages between IMVUs refused because too many waited for an owner."),
    (Counter, "vcos_cluster_tells_failed_total", "Tells between IMVUs that could not be delivered."),
    (Gauge, "vcos_cluster_asks_pending", "Asks between IMVUs this node waits on."),
    (Counter, "vcos_cluster_asks_timed_out_total", "Asks between IMVUs answered by their timeout."),
    (Counter, "vcos_cluster_answers_in_ack_total", "Answers to asks that rode the acknowledgement of the batch that carried them."),
    (Counter, "vcos_cluster_answers_late_total", "Answers that came after their ask timed out."),
    (Counter, "vcos_cluster_answers_dropped_total", "Answers dropped because the asking node is gone."),
    (Counter, "cluster_member_events_total", "Membership events (up, suspect, down, left, renewed), by kind."),
    (Counter, "cluster_datagrams_dropped_total", "Gossip datagrams dropped, by reason (short, foreign cluster, unauthenticated, ...)."),
    (Counter, "cluster_duplicate_node_id_total", "Conflicts of two processes claiming one node id."),
    (Counter, "cluster_events_dropped_total", "Membership events dropped because their reader lagged."),
    (Counter, "cluster_send_errors_total", "Gossip datagrams the socket failed to send."),
];

/// Registers the help of every metric with the installed recorder.
pub(crate) fn describe_all() {
    for (kind, name, help) in METRICS {
        match kind {
            Counter => describe_counter!(*name, *help),
            Gauge => describe_gauge!(*name, *help),
            Histogram(unit) => describe_histogram!(*name, *unit, *help),
        }
    }
}
