-- Queries of the web dashboard. A NULL tenant_id means every tenant (admins); the jobs list itself
-- is the API's list_jobs (shared/db/queries.sql).

-- name: dashboard_live_counts
-- jobs still to run per queue and state, and the oldest due available job (index-only on jobs_live_idx)
SELECT queue, state, count(*) AS n,
       min(scheduled_at) FILTER (WHERE state = 'available' AND scheduled_at <= now()) AS oldest_due
  FROM jobs
 WHERE state IN ('scheduled', 'available', 'executing', 'retryable')
   AND (%(tenant_id)s::text IS NULL OR tenant_id = %(tenant_id)s)
 GROUP BY queue, state;

-- name: dashboard_recent_outcomes
-- final jobs since `since` per queue, state and time bucket of `bucket_seconds` before `now` (both
-- passed as values, not now() - interval, so the planner estimates the range from the statistics)
SELECT queue, state,
       floor(extract(epoch FROM %(now)s::timestamptz - coalesce(completed_at, discarded_at, cancelled_at))
             / %(bucket_seconds)s)::int AS buckets_ago,
       count(*) AS n
  FROM jobs
 WHERE state IN ('completed', 'discarded', 'cancelled')
   AND coalesce(completed_at, discarded_at, cancelled_at) > %(since)s::timestamptz
   AND (%(tenant_id)s::text IS NULL OR tenant_id = %(tenant_id)s)
 GROUP BY queue, state, buckets_ago;

-- name: dashboard_queues
-- every queue with its fleet-wide limit, pause flag and machines alive now
SELECT q.name, q."limit", q.paused,
       (SELECT count(*) FROM machines m WHERE m.queue = q.name AND m.state IN ('launching', 'running')) AS machines
  FROM queues q
 ORDER BY q.name;

-- name: dashboard_callback_jobs
-- the callback webhooks a job's final states enqueued (jobs_callback_for_idx)
SELECT id, state, attempt, errors FROM jobs
 WHERE meta ? 'callbackFor' AND meta ->> 'callbackFor' = %(job_id)s::text AND tenant_id = %(tenant_id)s
 ORDER BY id;

-- name: dashboard_batch_counts
-- how many jobs of a batch are in each state
SELECT state, count(*) AS n FROM jobs
 WHERE batch_id = %(batch_id)s AND tenant_id = %(tenant_id)s
 GROUP BY state;
