-- Named SQL of the benchmark (seeding, references, reading results back). Loaded by bench/harness.py.

-- name: raw_insert_job
-- the ingress reference: one job row, the same columns insert_job writes, one statement per transaction
INSERT INTO jobs (queue, worker, state, tenant_id, args, meta, tags, priority, max_attempts,
                  batch_id, unique_key, unique_states, scheduled_at)
VALUES (%(queue)s, %(worker)s, 'available', %(tenant_id)s, %(args)s, %(meta)s, %(tags)s, %(priority)s,
        %(max_attempts)s, NULL, NULL, NULL, now());

-- name: raw_insert_jobs_unnest
-- the bulk reference: the same rows insert_jobs writes, in one INSERT ... unnest, ids returned
INSERT INTO jobs (queue, worker, state, tenant_id, args, meta, tags, priority, max_attempts, batch_id, scheduled_at)
SELECT i.queue, i.worker, 'available', i.tenant_id, i.args, i.meta, '{}', i.priority, i.max_attempts,
       i.batch_id, now()
  FROM unnest(%(queue)s::text[], %(worker)s::text[], %(tenant_id)s::text[], %(args)s::jsonb[],
              %(meta)s::jsonb[], %(priority)s::smallint[], %(max_attempts)s::int[], %(batch_id)s::text[])
       AS i(queue, worker, tenant_id, args, meta, priority, max_attempts, batch_id)
RETURNING id;

-- name: seed_jobs
-- `count` available jobs of one queue and function, inserted server-side
INSERT INTO jobs (queue, worker, state, tenant_id, args, meta, max_attempts)
SELECT %(queue)s, %(worker)s, 'available', %(tenant_id)s, %(args)s, '{}', 5
  FROM generate_series(1, %(count)s);

-- name: queue_span
-- how many jobs of a queue completed, and the seconds from the first claim to the last completion
SELECT count(*) FILTER (WHERE state = 'completed') AS completed,
       count(*) AS total,
       extract(epoch FROM max(completed_at) - min(attempted_at))::float8 AS seconds
  FROM jobs WHERE queue = %(queue)s;

-- name: first_claimed
-- a row once the first job of a queue (by id) has been claimed (an index probe: polled often)
SELECT 1 FROM jobs WHERE id = (SELECT min(id) FROM jobs WHERE queue = %(queue)s) AND attempted_at IS NOT NULL;

-- name: completed_count
SELECT count(*) FROM jobs WHERE queue = %(queue)s AND state = 'completed';

-- name: pgqueuer_first_pick
-- a row once a pgqueuer drain has picked its first job
SELECT 1 FROM pgqueuer_log WHERE status = 'picked' LIMIT 1;

-- name: pgqueuer_span
-- the same for a pgqueuer drain, from its log table: first pick to last success
SELECT count(*) FILTER (WHERE status = 'successful') AS completed,
       extract(epoch FROM max(created) FILTER (WHERE status = 'successful')
                          - min(created) FILTER (WHERE status = 'picked'))::float8 AS seconds
  FROM pgqueuer_log;

-- name: live_machine_count
-- machines the dispatcher still counts as launching or running
SELECT count(*) AS n FROM machines WHERE state IN ('launching', 'running');

-- name: machine_times
-- when the dispatcher recorded the machine it launched for a job (and when it was first seen running)
SELECT extract(epoch FROM launched_at)::float8 AS launched, extract(epoch FROM started_at)::float8 AS started
  FROM machines WHERE job_id = %(job_id)s ORDER BY launched_at LIMIT 1;

-- name: machine_intervals
-- every machine's life as the dispatcher recorded it (exited_at NULL: still live)
SELECT id, launched_at, started_at, exited_at, exit_code, jobs_run FROM machines ORDER BY launched_at;

-- name: create_run_markers
-- one row per execution of a dispatcher-bench job (written by the bench function `mark`)
CREATE TABLE IF NOT EXISTS bench_runs (
    job_id     bigint NOT NULL,
    attempt    integer NOT NULL,
    machine_id text NOT NULL,
    at         timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- name: insert_run_marker
INSERT INTO bench_runs (job_id, attempt, machine_id) VALUES (%(job_id)s, %(attempt)s, %(machine_id)s);

-- name: run_marker_summary
-- executions per job: how many jobs ran once, never, or more than once
WITH per_job AS (
    SELECT j.id, j.state, count(r.job_id) AS runs
      FROM jobs j LEFT JOIN bench_runs r ON r.job_id = j.id
     WHERE j.queue = 'default'
     GROUP BY j.id, j.state
)
SELECT count(*) AS jobs,
       count(*) FILTER (WHERE state = 'completed') AS completed,
       count(*) FILTER (WHERE runs = 0) AS never_ran,
       count(*) FILTER (WHERE runs = 1) AS ran_once,
       count(*) FILTER (WHERE runs > 1) AS ran_more_than_once,
       coalesce(sum(runs), 0)::bigint AS executions
  FROM per_job;

-- name: dashboard_fill_jobs
-- a job history for the dashboard metric: `n` jobs over the last `span_seconds`, oldest first, across
-- `tenants` tenants and the seven queues; final except among the newest 2 %, where three in four are still
-- to run (available, scheduled, retryable, executing): a backlog of 1.5 % of the table
INSERT INTO jobs (queue, worker, tenant_id, args, tags, state, attempt, max_attempts, errors, attempted_by,
                  attempted_at, heartbeat_at, claim_token, inserted_at, scheduled_at, completed_at, discarded_at,
                  cancelled_at)
SELECT q.queue, q.queue || '-worker', 'tenant-' || (g %% %(tenants)s), jsonb_build_object('n', g),
       ARRAY['tag-' || (g %% 50)], s.state,
       CASE WHEN s.state IN ('executing', 'completed', 'discarded', 'retryable') THEN 1 ELSE 0 END, 3,
       CASE WHEN s.state IN ('discarded', 'retryable')
            THEN '[{"attempt": 1, "kind": "bench", "error": "failed on purpose"}]'::jsonb ELSE '[]'::jsonb END,
       CASE WHEN s.state IN ('executing', 'completed', 'discarded', 'retryable') THEN 'machine-bench' END,
       CASE WHEN s.state IN ('executing', 'completed', 'discarded', 'retryable') THEN t.at END,
       CASE WHEN s.state = 'executing' THEN now() END,
       gen_random_uuid(), t.at, t.at + CASE WHEN s.state IN ('scheduled', 'retryable') THEN interval '1 day' ELSE interval '0' END,
       CASE WHEN s.state = 'completed' THEN t.at + interval '1 second' END,
       CASE WHEN s.state = 'discarded' THEN t.at + interval '1 second' END,
       CASE WHEN s.state = 'cancelled' THEN t.at + interval '1 second' END
  FROM generate_series(1, %(n)s) AS g
 CROSS JOIN LATERAL (SELECT (ARRAY['default', 'images', 'emails', 'webhooks', 'documents', 'exports', 'archives'])
                            [1 + (g::bigint * 7919 %% 7)] AS queue) AS q
 CROSS JOIN LATERAL (SELECT now() - make_interval(secs => (%(n)s - g)::float8 * %(span_seconds)s / %(n)s) AS at) AS t
 CROSS JOIN LATERAL (SELECT CASE WHEN g <= %(n)s * 0.98
                                 THEN CASE WHEN r < 0.95 THEN 'completed' WHEN r < 0.98 THEN 'discarded'
                                           ELSE 'cancelled' END
                                 -- the newest 2 %%: what is still queued, running or waiting to retry
                                 ELSE CASE WHEN r < 0.40 THEN 'available' WHEN r < 0.60 THEN 'scheduled'
                                           WHEN r < 0.70 THEN 'retryable' WHEN r < 0.75 THEN 'executing'
                                           WHEN r < 0.95 THEN 'completed' ELSE 'discarded' END
                            END AS state
                       FROM (SELECT random() + g * 0 AS r) AS rnd) AS s;

-- name: seed_tenant_jobs
-- `count` available jobs of one queue and function spread round the tenants prefix-0 .. prefix-(tenants-1)
INSERT INTO jobs (queue, worker, state, tenant_id, args, meta, max_attempts)
SELECT %(queue)s, %(worker)s, 'available', %(prefix)s || '-' || (n %% %(tenants)s), '{}', '{}', 5
  FROM generate_series(1, %(count)s) n;

-- name: tenant_waits
-- insert -> start, in seconds, of one tenant's started jobs, and how many of its jobs there are
SELECT extract(epoch FROM attempted_at - inserted_at)::float8 AS wait FROM jobs
 WHERE tenant_id = %(tenant_id)s AND attempted_at IS NOT NULL;

-- name: tenant_completed
SELECT count(*) FROM jobs WHERE tenant_id = %(tenant_id)s AND state = 'completed';

-- name: set_rate_limit
-- a rate limit on one queue, keyed by tenant (what PUT /admin/queues/{name}/limits writes)
UPDATE queues SET rate_limit = %(limit)s, rate_period_seconds = %(period)s, rate_key = 'tenant' WHERE name = %(queue)s;

-- name: start_times
-- every start of a queue's jobs, in epoch seconds, oldest first
SELECT extract(epoch FROM attempted_at)::float8 FROM jobs
 WHERE queue = %(queue)s AND attempted_at IS NOT NULL
 ORDER BY attempted_at;

-- name: first_start
-- the first start of a queue's jobs in epoch seconds, or NULL while none has started
SELECT extract(epoch FROM min(attempted_at))::float8 FROM jobs WHERE queue = %(queue)s;

-- name: seed_webhook_jobs
-- `count` available webhook jobs, each with `"seq": i` (0-based) in its payload, inserted server-side
INSERT INTO jobs (queue, worker, state, tenant_id, args, meta, max_attempts)
SELECT 'webhooks', %(worker)s, 'available', %(tenant_id)s,
       jsonb_set(%(args)s::jsonb, '{payload,seq}', to_jsonb(g - 1)), '{}', %(max_attempts)s
  FROM generate_series(1, %(count)s) AS g;
