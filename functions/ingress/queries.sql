-- Queries of the ingress alone: idempotency keys and the metrics read at scrape time.

-- name: claim_idempotency_key
-- take a key: new, expired, or abandoned in flight; no row back means someone else holds it
INSERT INTO idempotency_keys (tenant_id, key, request_hash)
VALUES (%(tenant_id)s, %(key)s, %(request_hash)s)
ON CONFLICT (tenant_id, key) DO UPDATE
   SET request_hash = EXCLUDED.request_hash, status = NULL, response = NULL, created_at = now()
 WHERE idempotency_keys.created_at < now() - make_interval(secs => %(ttl_seconds)s)
    OR (idempotency_keys.status IS NULL
        AND idempotency_keys.created_at < now() - make_interval(secs => %(abandoned_seconds)s))
RETURNING created_at;

-- name: get_idempotency_key
-- the holder of a key: what it was for, and its answer once it has one
SELECT request_hash, status, response FROM idempotency_keys
 WHERE tenant_id = %(tenant_id)s AND key = %(key)s;

-- name: complete_idempotency_key
-- record the answer to replay (same transaction as the jobs it created)
UPDATE idempotency_keys SET status = %(status)s, response = %(response)s
 WHERE tenant_id = %(tenant_id)s AND key = %(key)s AND request_hash = %(request_hash)s AND status IS NULL
RETURNING key;

-- name: release_idempotency_key
-- the request failed before answering: free the key so a retry can run
DELETE FROM idempotency_keys
 WHERE tenant_id = %(tenant_id)s AND key = %(key)s AND request_hash = %(request_hash)s AND status IS NULL;

-- name: prune_idempotency_keys
-- delete up to `limit` keys older than their time to live
DELETE FROM idempotency_keys
 WHERE ctid = ANY (ARRAY(SELECT ctid FROM idempotency_keys
                          WHERE created_at < now() - make_interval(secs => %(ttl_seconds)s)
                          LIMIT %(limit)s));

-- name: metrics_job_outcomes
-- final jobs per queue and state: rows still in jobs plus rows the pruner deleted
SELECT queue, state, sum(n)::bigint AS n FROM (
    SELECT queue, state, count(*) AS n FROM jobs
     WHERE state IN ('completed', 'discarded', 'cancelled')
     GROUP BY queue, state
    UNION ALL
    SELECT queue, state, count AS n FROM job_outcomes_pruned
) outcomes
GROUP BY queue, state
ORDER BY queue, state;

-- name: metrics_job_durations
-- recent wait (due -> started) and run (started -> final) times, bucketed by `bounds`
WITH recent AS (
    SELECT queue, state, scheduled_at, attempted_at,
           coalesce(completed_at, discarded_at, cancelled_at) AS final_at
      FROM jobs
     WHERE state IN ('completed', 'discarded', 'cancelled')
       AND coalesce(completed_at, discarded_at, cancelled_at) > now() - make_interval(secs => %(window_seconds)s)
    UNION ALL
    SELECT queue, state, scheduled_at, attempted_at, NULL FROM jobs
     WHERE state = 'executing' AND attempted_at > now() - make_interval(secs => %(window_seconds)s)
), samples AS (
    SELECT queue, 'wait' AS kind, greatest(0, extract(epoch FROM attempted_at - scheduled_at))::float8 AS seconds
      FROM recent WHERE attempted_at IS NOT NULL
    UNION ALL
    -- A cancelled job's run was cut short; only jobs that ran to an outcome count.
    SELECT queue, 'run', greatest(0, extract(epoch FROM final_at - attempted_at))::float8
      FROM recent WHERE state IN ('completed', 'discarded') AND attempted_at IS NOT NULL
)
SELECT queue, kind, width_bucket(seconds, %(bounds)s::float8[]) AS bucket, count(*) AS n, sum(seconds) AS total
  FROM samples
 GROUP BY queue, kind, bucket
 ORDER BY queue, kind, bucket;

-- name: metrics_machines
-- machines launched per queue and launcher (pruned ones included), and how many are live now
SELECT queue, launcher, sum(launched)::bigint AS launched, sum(live)::bigint AS live FROM (
    SELECT queue, launcher, count(*) AS launched,
           count(*) FILTER (WHERE state IN ('launching', 'running')) AS live
      FROM machines
     GROUP BY queue, launcher
    UNION ALL
    SELECT queue, launcher, count, 0 FROM machine_launches_pruned
) machines
GROUP BY queue, launcher
ORDER BY queue, launcher;

-- name: metrics_machine_boot
-- recent launch latency (launched -> started), bucketed by `bounds`
SELECT queue, width_bucket(extract(epoch FROM started_at - launched_at)::float8, %(bounds)s::float8[]) AS bucket,
       count(*) AS n, sum(extract(epoch FROM started_at - launched_at))::float8 AS total
  FROM machines
 WHERE launched_at > now() - make_interval(secs => %(window_seconds)s) AND started_at IS NOT NULL
 GROUP BY queue, bucket
 ORDER BY queue, bucket;

-- name: metrics_duty_errors
-- failures of each dispatcher duty, whichever instance led
SELECT duty, errors FROM dispatcher_duty_errors ORDER BY duty;

-- live events and the dashboard ----------------------------------------------------------------

-- name: event_details
-- what a job event's notification leaves out: the job's tags, its progress, and its errors (for the
-- jobs whose failure events need one: the hub picks the entry of the event's attempt)
SELECT id, tags, progress, attempt, CASE WHEN id = ANY (%(failed)s::bigint[]) THEN errors END AS errors
  FROM jobs WHERE id = ANY (%(ids)s::bigint[]);
