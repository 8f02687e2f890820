-- Every runtime query of the service, by name. Loaded once by shared/db/sql.py.

-- name: insert_job
-- insert -> available (or scheduled when due later); a unique conflict inserts nothing
INSERT INTO jobs (queue, worker, state, tenant_id, args, meta, tags, priority, max_attempts,
                  batch_id, unique_key, unique_states, scheduled_at)
VALUES (%(queue)s, %(worker)s,
        CASE WHEN %(scheduled_at)s::timestamptz > now() THEN 'scheduled' ELSE 'available' END,
        %(tenant_id)s, %(args)s, %(meta)s, %(tags)s, %(priority)s, %(max_attempts)s,
        %(batch_id)s, %(unique_key)s, %(unique_states)s, coalesce(%(scheduled_at)s::timestamptz, now()))
ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND state = ANY (unique_states) DO NOTHING
RETURNING *;

-- name: insert_jobs
-- insert many -> available/scheduled in one statement (no unique keys)
-- (args, meta and tags go as binary jsonb arrays: a text array literal is built in Python, every
-- quote of the JSON escaped by a regex callback, about 25 us a job of the API's CPU)
INSERT INTO jobs (queue, worker, state, tenant_id, args, meta, tags, priority, max_attempts,
                  batch_id, scheduled_at)
SELECT i.queue, i.worker,
       CASE WHEN i.scheduled_at > now() THEN 'scheduled' ELSE 'available' END,
       i.tenant_id, i.args, i.meta, ARRAY(SELECT jsonb_array_elements_text(i.tags)), i.priority,
       i.max_attempts, i.batch_id, coalesce(i.scheduled_at, now())
  FROM unnest(%(queue)s::text[], %(worker)s::text[], %(tenant_id)s::text[], %(args)b::jsonb[],
              %(meta)b::jsonb[], %(tags)b::jsonb[], %(priority)s::smallint[], %(max_attempts)s::int[],
              %(batch_id)s::text[], %(scheduled_at)s::timestamptz[])
       WITH ORDINALITY AS i(queue, worker, tenant_id, args, meta, tags, priority, max_attempts,
                            batch_id, scheduled_at, ord)
 ORDER BY i.ord
RETURNING *;

-- name: insert_jobs_returning_ids
-- insert many, answering only their ids (bulk fan-out: the rows are not read back)
-- (binary jsonb arrays, as insert_jobs)
INSERT INTO jobs (queue, worker, state, tenant_id, args, meta, tags, priority, max_attempts,
                  batch_id, scheduled_at)
SELECT i.queue, i.worker,
       CASE WHEN i.scheduled_at > now() THEN 'scheduled' ELSE 'available' END,
       i.tenant_id, i.args, i.meta, ARRAY(SELECT jsonb_array_elements_text(i.tags)), i.priority,
       i.max_attempts, i.batch_id, coalesce(i.scheduled_at, now())
  FROM unnest(%(queue)s::text[], %(worker)s::text[], %(tenant_id)s::text[], %(args)b::jsonb[],
              %(meta)b::jsonb[], %(tags)b::jsonb[], %(priority)s::smallint[], %(max_attempts)s::int[],
              %(batch_id)s::text[], %(scheduled_at)s::timestamptz[])
       WITH ORDINALITY AS i(queue, worker, tenant_id, args, meta, tags, priority, max_attempts,
                            batch_id, scheduled_at, ord)
 ORDER BY i.ord
RETURNING id;

-- name: reserve_job_ids
-- `n` job ids from the jobs' identity sequence, ascending, and the transaction's now(): what a
-- COPY of new jobs writes into `id`, `scheduled_at` and `state` (job_store.insert_job_ids)
SELECT now() AS now,
       ARRAY(SELECT nextval(s.seq) FROM (SELECT pg_get_serial_sequence('jobs', 'id')::regclass AS seq) s,
                    generate_series(1, %(n)s::int) ORDER BY 1) AS ids;

-- name: copy_jobs
-- new jobs by COPY (binary; column types in job_store._COPY_TYPES): ids from reserve_job_ids.
-- COPY fires the statement-level AFTER INSERT triggers, transition tables included, like INSERT
COPY jobs (id, queue, worker, state, tenant_id, args, meta, tags, priority, max_attempts, batch_id,
           scheduled_at)
FROM STDIN (FORMAT BINARY);

-- name: find_unique_job
-- the live job holding a unique key
SELECT * FROM jobs WHERE unique_key = %(unique_key)s AND state = ANY (unique_states) LIMIT 1;

-- name: unique_key_holder
-- the live job holding the unique key of job `id` (another row, same tenant by construction)
SELECT h.id FROM jobs j JOIN jobs h ON h.unique_key = j.unique_key AND h.id <> j.id
 WHERE j.id = %(id)s AND h.state = ANY (h.unique_states) AND h.tenant_id = j.tenant_id
 LIMIT 1;

-- name: get_job
-- one job, optionally only within a tenant
SELECT * FROM jobs WHERE id = %(id)s AND (%(tenant_id)s::text IS NULL OR tenant_id = %(tenant_id)s);

-- name: list_jobs
-- a tenant's jobs (or everyone's for admin), newest first, keyset-paginated by id
SELECT * FROM jobs
 WHERE (%(tenant_id)s::text IS NULL OR tenant_id = %(tenant_id)s)
   AND (%(queue)s::text IS NULL OR queue = %(queue)s)
   -- One state is written as an equality the planner folds to a constant, so an index on
   -- (.., state, id DESC) yields the newest first; `state = ANY(...)` would need a sort.
   AND (%(states)s::text[] IS NULL OR cardinality(%(states)s::text[]) = 1 OR state = ANY (%(states)s))
   AND (%(states)s::text[] IS NULL OR cardinality(%(states)s::text[]) <> 1 OR state = (%(states)s::text[])[1])
   AND (%(worker)s::text IS NULL OR worker = %(worker)s)
   AND (%(batch_id)s::text IS NULL OR batch_id = %(batch_id)s)
   AND (%(tag)s::text IS NULL OR %(tag)s = ANY (tags))
   AND (%(before_id)s::bigint IS NULL OR id < %(before_id)s)
 ORDER BY id DESC
 LIMIT %(limit)s;

-- name: claim_jobs
-- available -> executing for up to max_jobs jobs, within the queue's fleet-wide limit
SELECT * FROM claim_jobs(%(queue)s, %(machine_id)s, %(max_jobs)s, %(prefer_id)s);

-- name: rate_wait_seconds
-- seconds until the first full rate window of a queue has room again (no row or NULL: none is full)
SELECT min(extract(epoch FROM l.oldest + make_interval(secs => q.rate_period_seconds) - clock_timestamp()))::float8
           AS seconds
  FROM queues q
  JOIN rate_windows w ON w.queue = q.name
 CROSS JOIN LATERAL (SELECT min(s) AS oldest, count(*) AS n FROM unnest(w.starts) s
                      WHERE s > clock_timestamp() - make_interval(secs => q.rate_period_seconds)) l
 WHERE q.name = %(queue)s AND q.rate_limit IS NOT NULL AND l.n >= q.rate_limit;

-- name: complete_job
-- executing -> completed, only by the current claim
UPDATE jobs SET state = 'completed', completed_at = now(), result = %(result)s, heartbeat_at = NULL
 WHERE id = %(job_id)s AND state = 'executing' AND claim_token = %(claim_token)s
RETURNING id;

-- name: complete_jobs
-- executing -> completed for a batch, each row only by its current claim.
-- Also answers the rows these claims had already completed: when a commit landed but its reply
-- was lost (connection dropped), the retry must not mistake its own completion for a lost job.
-- The rows are found by primary key and their state compared, never searched for: a constant
-- state in a join lets the planner read a partial index of every executing or completed job
-- instead, which stale statistics make look cheap (a batch then cost as much as every completion
-- before it; tests/shared/db/test_engine_plans.py). MATERIALIZED CTEs keep the constant out.
WITH done AS (
    SELECT * FROM unnest(%(job_ids)s::bigint[], %(claim_tokens)s::uuid[], %(results)s::jsonb[],
                         %(progress)s::jsonb[])
        AS d(id, claim_token, result, progress)
), found AS MATERIALIZED (
    -- Locked: a write still in flight on a row (this batch's own first try, whose reply was lost
    -- while its backend ran on) is waited for and its outcome read, so a retry recognises its own
    -- completion instead of reading the row as still executing and reporting it lost.
    SELECT j.id, j.state, d.claim_token, d.result, d.progress
      FROM done d JOIN jobs j ON j.id = d.id AND j.claim_token = d.claim_token
       FOR UPDATE OF j
), open AS MATERIALIZED (
    SELECT * FROM found WHERE state = 'executing'
), completed_now AS (
    -- `jobs.state = open.state` ('executing') is rechecked on the newest row version when a
    -- concurrent change (cancel, rescue) got there first, as a constant would be.
    UPDATE jobs SET state = 'completed', completed_at = now(), result = open.result, heartbeat_at = NULL,
                    progress = coalesce(open.progress, jobs.progress)
      FROM open
     WHERE jobs.id = open.id AND jobs.state = open.state AND jobs.claim_token = open.claim_token
    RETURNING jobs.id
), counted AS (
    -- the machine's count of jobs run, in the same statement (one round trip, no transaction)
    UPDATE machines SET jobs_run = jobs_run + (SELECT count(*) FROM completed_now) WHERE id = %(machine_id)s
)
SELECT id, true AS fresh FROM completed_now
UNION ALL
SELECT id, false AS fresh FROM found WHERE state = 'completed';

-- name: fail_job
-- executing -> retryable (at retry_at) or discarded, recording the error; fenced
UPDATE jobs SET state = %(state)s,
                scheduled_at = coalesce(%(retry_at)s::timestamptz, scheduled_at),
                discarded_at = CASE WHEN %(state)s = 'discarded' THEN now() END,
                errors = errors || jsonb_build_array(%(error)s::jsonb),
                heartbeat_at = NULL
 WHERE id = %(job_id)s AND state = 'executing' AND claim_token = %(claim_token)s
RETURNING id;

-- name: snooze_job
-- executing -> scheduled, giving the attempt back; fenced
UPDATE jobs SET state = 'scheduled', attempt = attempt - 1, heartbeat_at = NULL,
                -- A count only the service writes; anything else found there starts again at 1.
                meta = jsonb_set(meta, '{snoozed}', to_jsonb(CASE WHEN jsonb_typeof(meta->'snoozed') = 'number'
                                                                   THEN floor((meta->>'snoozed')::numeric)::bigint
                                                                   ELSE 0 END + 1)),
                scheduled_at = now() + make_interval(secs => %(seconds)s)
 WHERE id = %(job_id)s AND state = 'executing' AND claim_token = %(claim_token)s
RETURNING id;

-- name: hand_back_job
-- executing -> available, attempt given back (the machine is shutting down); fenced
UPDATE jobs SET state = 'available', attempt = attempt - 1, heartbeat_at = NULL, scheduled_at = now()
 WHERE id = %(job_id)s AND state = 'executing' AND claim_token = %(claim_token)s
RETURNING id;

-- name: heartbeat_jobs
-- executing -> executing: refresh the heartbeat of every job whose claim this machine still holds,
-- with the progress its handler last reported (NULL: nothing new)
-- (rows found by primary key, state compared, not searched for: see complete_jobs)
WITH held AS MATERIALIZED (
    SELECT h.id, h.claim_token, h.progress, 'executing'::text AS state
      FROM unnest(%(job_ids)s::bigint[], %(claim_tokens)s::uuid[], %(progress)s::jsonb[])
           AS h(id, claim_token, progress)
)
UPDATE jobs SET heartbeat_at = now(), progress = coalesce(held.progress, jobs.progress)
  FROM held
 WHERE jobs.id = held.id AND jobs.claim_token = held.claim_token AND jobs.state = held.state
RETURNING jobs.id;

-- name: cancel_jobs
-- any non-final state -> cancelled, by criteria within a tenant (NULL tenant: admin)
WITH target AS (
    SELECT id, state AS was FROM jobs
     WHERE (%(tenant_id)s::text IS NULL OR tenant_id = %(tenant_id)s)
       AND state IN ('scheduled', 'available', 'executing', 'retryable')
       AND (%(ids)s::bigint[] IS NULL OR id = ANY (%(ids)s))
       AND (%(queue)s::text IS NULL OR queue = %(queue)s)
       AND (%(worker)s::text IS NULL OR worker = %(worker)s)
       AND (%(states)s::text[] IS NULL OR state = ANY (%(states)s))
       AND (%(batch_id)s::text IS NULL OR batch_id = %(batch_id)s)
     FOR UPDATE
)
UPDATE jobs SET state = 'cancelled', cancelled_at = now(), heartbeat_at = NULL
  FROM target WHERE jobs.id = target.id
RETURNING jobs.id, jobs.queue, target.was, jobs.attempted_by;

-- name: retry_job
-- discarded/cancelled -> available, attempts reset (explicit retry)
UPDATE jobs SET state = 'available', attempt = 0, scheduled_at = now(), discarded_at = NULL,
                cancelled_at = NULL, attempted_by = NULL, heartbeat_at = NULL, result = NULL, claim_token = NULL,
                progress = NULL
 WHERE id = %(id)s AND (%(tenant_id)s::text IS NULL OR tenant_id = %(tenant_id)s)
   AND state IN ('discarded', 'cancelled')
   -- a workflow step is retried with its workflow (its dependencies decide where it goes)
   AND workflow_id IS NULL
RETURNING *;

-- name: stage_due_jobs
-- scheduled/retryable -> available once due (the stager promotes both)
WITH due AS (
    SELECT id FROM jobs
     WHERE state IN ('scheduled', 'retryable') AND scheduled_at <= now()
     ORDER BY scheduled_at
     LIMIT %(limit)s
     FOR UPDATE SKIP LOCKED
)
UPDATE jobs SET state = 'available' FROM due WHERE jobs.id = due.id
RETURNING jobs.id;

-- name: rescue_stale_jobs
-- executing -> retryable (attempts left) or discarded: heartbeat stale or holder machine gone
WITH stale AS (
    SELECT j.id,
           CASE WHEN m.id IS NOT NULL THEN 'machine ' || j.attempted_by || ' is gone'
                ELSE 'no heartbeat for ' || %(rescue_after_seconds)s || 's' END AS reason
      FROM jobs j
      LEFT JOIN machines m ON m.id = j.attempted_by AND m.state IN ('exited', 'failed')
     WHERE j.state = 'executing'
       AND (j.heartbeat_at < now() - make_interval(secs => %(rescue_after_seconds)s) OR m.id IS NOT NULL)
     FOR UPDATE OF j SKIP LOCKED
)
UPDATE jobs SET state = CASE WHEN jobs.attempt < jobs.max_attempts THEN 'retryable' ELSE 'discarded' END,
                scheduled_at = now(),
                discarded_at = CASE WHEN jobs.attempt < jobs.max_attempts THEN NULL ELSE now() END,
                heartbeat_at = NULL,
                errors = jobs.errors || jsonb_build_array(jsonb_build_object(
                    'attempt', jobs.attempt, 'at', now(), 'kind', 'rescued',
                    'error', 'rescued by the lifeline: ' || stale.reason,
                    'machine', jobs.attempted_by, 'startedAt', jobs.attempted_at))
  FROM stale WHERE jobs.id = stale.id
RETURNING jobs.id, jobs.queue, jobs.state, jobs.attempted_by;

-- name: prune_jobs
-- delete final jobs that became final more than max_age_seconds ago
WITH old AS (
    SELECT id FROM jobs
     WHERE state IN ('completed', 'discarded', 'cancelled')
       AND coalesce(completed_at, discarded_at, cancelled_at) < now() - make_interval(secs => %(max_age_seconds)s)
     LIMIT %(limit)s
)
DELETE FROM jobs USING old WHERE jobs.id = old.id
RETURNING jobs.id;

-- name: ensure_queue
-- create a queue row with its configured limit, fairness and tenant cap when missing (runtime changes win)
INSERT INTO queues (name, "limit", fair, tenant_limit) VALUES (%(name)s, %(limit)s, %(fair)s, %(tenant_limit)s)
ON CONFLICT (name) DO NOTHING;

-- name: queue_statuses
-- per queue: limit, pause, counts per live state, age of the oldest due available job
SELECT q.name, q."limit", q.paused,
       count(j.id) FILTER (WHERE j.state = 'executing') AS running,
       count(j.id) FILTER (WHERE j.state = 'available') AS available,
       count(j.id) FILTER (WHERE j.state = 'scheduled') AS scheduled,
       count(j.id) FILTER (WHERE j.state = 'retryable') AS retryable,
       coalesce(extract(epoch FROM now() - min(j.scheduled_at) FILTER (WHERE j.state = 'available')), 0)
           AS oldest_available_age_seconds
  FROM queues q
  LEFT JOIN jobs j ON j.queue = q.name AND j.state IN ('executing', 'available', 'scheduled', 'retryable')
 WHERE (%(name)s::text IS NULL OR q.name = %(name)s)
 GROUP BY q.name, q."limit", q.paused
 ORDER BY q.name;

-- name: set_queue_paused
-- pause or resume a queue fleet-wide
UPDATE queues SET paused = %(paused)s, updated_at = now() WHERE name = %(name)s RETURNING name;

-- name: set_queue_limit
-- scale a queue fleet-wide
UPDATE queues SET "limit" = %(limit)s, updated_at = now() WHERE name = %(name)s RETURNING name;

-- name: queue_demand
-- what the scaler needs per queue: due work, executing jobs, live machines
SELECT q.name, q."limit", q.paused,
       -- Due work a claim could take now: a tenant at its cap adds none, so machines are not
       -- launched for jobs that must wait for that tenant's running ones.
       (SELECT coalesce(sum(least(d.n, greatest(0, coalesce(t.max_running, q.tenant_limit, 1000) - coalesce(r.n, 0)))), 0)
          FROM (SELECT j.tenant_id, count(*) AS n FROM jobs j
                 WHERE j.queue = q.name AND j.state = 'available' AND j.scheduled_at <= now()
                 GROUP BY j.tenant_id) d
          LEFT JOIN queue_tenants t ON t.queue = q.name AND t.tenant_id = d.tenant_id
          LEFT JOIN (SELECT j.tenant_id, count(*) AS n FROM jobs j
                      WHERE j.queue = q.name AND j.state = 'executing'
                      GROUP BY j.tenant_id) r ON r.tenant_id = d.tenant_id)::bigint AS due,
       (SELECT min(j.id) FROM jobs j WHERE j.queue = q.name AND j.state = 'available'
                                       AND j.scheduled_at <= now()) AS first_due_id,
       (SELECT count(*) FROM jobs j WHERE j.queue = q.name AND j.state = 'executing') AS executing,
       -- Only machines that can still take work count: booting within the grace period (the
       -- reconciler may already call it running: its process or VM is up before its code), or
       -- heartbeating. A stalled (SIGSTOPped, partitioned) machine must not hide demand.
       (SELECT count(*) FROM machines m
         WHERE m.queue = q.name
           AND ((m.state IN ('launching', 'running')
                 AND m.launched_at > now() - make_interval(secs => %(boot_grace_seconds)s))
             OR (m.state = 'running' AND m.last_seen_at > now() - make_interval(secs => %(seen_within_seconds)s))))
           AS live_machines
  FROM queues q
 ORDER BY q.name;

-- name: insert_machine
-- record a machine the launcher just created
INSERT INTO machines (id, queue, launcher, state, job_id, detail)
VALUES (%(id)s, %(queue)s, %(launcher)s, 'launching', %(job_id)s, %(detail)s)
-- A warm-pool machine keeps its id across runs: each start is a new launch of the same row.
ON CONFLICT (id) DO UPDATE SET queue = EXCLUDED.queue, state = 'launching', job_id = EXCLUDED.job_id,
    detail = EXCLUDED.detail, launched_at = now(), started_at = NULL, last_seen_at = NULL,
    exited_at = NULL, exit_code = NULL, oom_killed = false;

-- name: machine_started
-- a machine reports it booted
UPDATE machines SET state = 'running', started_at = coalesce(started_at, now()), last_seen_at = now()
 WHERE id = %(id)s AND state = 'launching';

-- name: machine_seen
-- a machine's heartbeat, busy or idle
UPDATE machines SET last_seen_at = now(), state = 'running', started_at = coalesce(started_at, now())
 WHERE id = %(id)s AND state IN ('launching', 'running');

-- name: machine_ran_jobs
-- count jobs a machine finished
UPDATE machines SET jobs_run = jobs_run + %(count)s WHERE id = %(id)s;

-- name: machine_exited
-- a machine is gone, with its exit code when known
UPDATE machines SET state = %(state)s, exited_at = now(), exit_code = %(exit_code)s,
                    oom_killed = %(oom_killed)s
 WHERE id = %(id)s AND state IN ('launching', 'running')
RETURNING id;

-- name: machine_jobs_executing
-- how many jobs a machine still runs (its machine may be stopped when none)
SELECT count(*) AS n FROM jobs WHERE state = 'executing' AND attempted_by = %(machine_id)s;

-- name: live_machines
-- machines not known to have exited
SELECT * FROM machines WHERE state IN ('launching', 'running') ORDER BY launched_at;

-- name: recent_machines
-- newest machines first, for the admin API
SELECT * FROM machines ORDER BY launched_at DESC LIMIT %(limit)s;

-- dispatcher duties

-- name: lease_acquire
-- take the dispatcher lease when nobody holds it, it expired, or this holder already had it
-- (a leader that lost its connection takes its own lease back at once, as a new term)
INSERT INTO dispatcher_lease (holder, term, acquired_at, renewed_at, expires_at)
VALUES (%(holder)s, 1, now(), now(), now() + make_interval(secs => %(ttl_seconds)s))
ON CONFLICT (name) DO UPDATE
   SET holder = EXCLUDED.holder, term = dispatcher_lease.term + 1, acquired_at = now(), renewed_at = now(),
       expires_at = EXCLUDED.expires_at
 WHERE dispatcher_lease.expires_at < now() OR dispatcher_lease.holder = EXCLUDED.holder
RETURNING term;

-- name: lease_renew
-- extend the lease of this holder's term; nothing when the term was taken over. An expired term
-- nobody took over is still this holder's alone, so it may be renewed.
UPDATE dispatcher_lease SET renewed_at = now(), expires_at = now() + make_interval(secs => %(ttl_seconds)s)
 WHERE holder = %(holder)s AND term = %(term)s
RETURNING term;

-- name: lease_resign
-- give the lease up (clean shutdown): a standby takes over at its next attempt
DELETE FROM dispatcher_lease WHERE holder = %(holder)s AND term = %(term)s;

-- name: record_duty_error
-- count one failure of a dispatcher duty (dispatcher_duty_errors_total{duty})
INSERT INTO dispatcher_duty_errors (duty, errors, last_error, last_error_at)
VALUES (%(duty)s, 1, %(error)s, now())
ON CONFLICT (duty) DO UPDATE
   SET errors = dispatcher_duty_errors.errors + 1, last_error = EXCLUDED.last_error, last_error_at = now();

-- name: queue_boot_failures
-- per queue: machines that failed at boot since the newest machine of the queue that booted, and
-- how long ago the queue's newest machine since then was launched (one still booting included, so
-- a probe holds the next launch back). Failed at boot: ended non-zero (or failed) within the boot
-- grace without finishing a job, or still launching past it. Booted: finished a job, exited 0, or
-- lived past the boot grace. (started_at cannot tell: the reconciler sets it as soon as the
-- launcher reports the process or VM running, before the machine's own code has booted.)
SELECT q.queue,
       count(m.id) FILTER (
           WHERE m.jobs_run = 0
             AND ((m.state IN ('exited', 'failed') AND (m.state = 'failed' OR m.exit_code IS DISTINCT FROM 0)
                   AND m.exited_at <= m.launched_at + make_interval(secs => %(boot_grace_seconds)s))
                  OR (m.state = 'launching'
                      AND m.launched_at < now() - make_interval(secs => %(boot_grace_seconds)s)))
       ) AS failures,
       coalesce(extract(epoch FROM now() - max(m.launched_at)), 0)::float8 AS seconds_since_last
  FROM unnest(%(queues)s::text[]) AS q(queue)
  LEFT JOIN LATERAL (
        SELECT b.launched_at FROM machines b
         WHERE b.queue = q.queue
           AND (b.jobs_run > 0 OR (b.state = 'exited' AND b.exit_code = 0)
                OR (b.state IN ('exited', 'failed')
                    AND b.exited_at > b.launched_at + make_interval(secs => %(boot_grace_seconds)s))
                OR (b.state = 'running' AND b.launched_at < now() - make_interval(secs => %(boot_grace_seconds)s)))
         ORDER BY b.launched_at DESC
         LIMIT 1
  ) booted ON true
  LEFT JOIN machines m ON m.queue = q.queue AND m.launched_at > coalesce(booted.launched_at, '-infinity')
 GROUP BY q.queue
 ORDER BY q.queue;

-- name: prune_machines
-- delete machines that ended more than max_age_seconds ago, unless a job still names them as holder
WITH old AS (
    SELECT m.id FROM machines m
     WHERE m.state IN ('exited', 'failed') AND m.exited_at < now() - make_interval(secs => %(max_age_seconds)s)
       AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.state = 'executing' AND j.attempted_by = m.id)
     ORDER BY m.exited_at
     LIMIT %(limit)s
)
DELETE FROM machines USING old WHERE machines.id = old.id
RETURNING machines.id;


-- session settings ------------------------------------------------------------------------------

-- name: notify
-- send a notification on a channel of shared/notify.py (committed with the caller's transaction)
SELECT pg_notify(%(channel)s, %(payload)s);

-- name: read_only_snapshot
-- the current transaction reads one consistent snapshot and writes nothing (exports)
SET TRANSACTION READ ONLY;

-- name: utc_session_time_zone
-- timestamps of this transaction render in UTC whatever the database's TimeZone (exports)
SET LOCAL TimeZone = 'UTC';

-- name: server_keepalives
-- server-side TCP keepalives and user timeout for this session (the dispatcher's connection)
SELECT set_config('tcp_keepalives_idle', %(idle)s, false), set_config('tcp_keepalives_interval', %(interval)s, false),
       set_config('tcp_keepalives_count', %(count)s, false), set_config('tcp_user_timeout', %(user_timeout_ms)s, false);


-- fair claims, tenant caps and rate limits (issue 13) ---------------------------------------

-- name: queue_limits
-- a queue's claim rules
SELECT name, fair, tenant_limit, rate_limit, rate_period_seconds, rate_key FROM queues WHERE name = %(name)s;

-- name: queue_tenant_overrides
-- the tenants of a queue with their own cap or weight
SELECT tenant_id, weight, max_running FROM queue_tenants
 WHERE queue = %(name)s AND (weight IS NOT NULL OR max_running IS NOT NULL)
 ORDER BY tenant_id;

-- name: set_queue_limits
-- replace a queue's claim rules, fleet-wide (the claim reads them under the same row lock)
UPDATE queues SET fair = %(fair)s, tenant_limit = %(tenant_limit)s, rate_limit = %(rate_limit)s,
                  rate_period_seconds = %(rate_period_seconds)s, rate_key = %(rate_key)s, updated_at = now()
 WHERE name = %(name)s
RETURNING name;

-- name: clear_tenant_overrides
-- forget every tenant's own cap and weight in a queue (their round-robin positions stay)
UPDATE queue_tenants SET weight = NULL, max_running = NULL
 WHERE queue = %(name)s AND (weight IS NOT NULL OR max_running IS NOT NULL);

-- name: set_tenant_overrides
-- give tenants their own cap and weight in a queue
INSERT INTO queue_tenants (queue, tenant_id, weight, max_running)
SELECT %(name)s, o.tenant_id, o.weight, o.max_running
  FROM unnest(%(tenant_ids)s::text[], %(weights)s::int[], %(max_running)s::int[]) AS o(tenant_id, weight, max_running)
ON CONFLICT (queue, tenant_id) DO UPDATE SET weight = EXCLUDED.weight, max_running = EXCLUDED.max_running;

-- name: queue_tenant_stats
-- per queue and tenant with live jobs: due, running, waiting (scheduled, retryable) and throttled
-- (due but held back now by the tenant's cap or its full rate window), busiest first
WITH counts AS (
    SELECT j.queue, j.tenant_id,
           count(*) FILTER (WHERE j.state = 'available' AND j.scheduled_at <= now()) AS due,
           count(*) FILTER (WHERE j.state = 'executing') AS running,
           count(*) FILTER (WHERE j.state IN ('scheduled', 'retryable')
                               OR (j.state = 'available' AND j.scheduled_at > now())) AS waiting
      FROM jobs j
     WHERE (%(name)s::text IS NULL OR j.queue = %(name)s)
       AND j.state IN ('available', 'executing', 'scheduled', 'retryable')
     GROUP BY j.queue, j.tenant_id
)
SELECT c.queue, c.tenant_id, c.due, c.running, c.waiting, t.weight, t.max_running,
       coalesce(t.max_running, q.tenant_limit) AS cap,
       CASE WHEN c.running >= coalesce(t.max_running, q.tenant_limit, 2147483647)
              OR (q.rate_key = 'tenant'
                  AND rate_window_room(q.name, c.tenant_id, q.rate_limit, q.rate_period_seconds, clock_timestamp()) <= 0)
            THEN c.due ELSE 0 END AS throttled
  FROM counts c
  JOIN queues q ON q.name = c.queue
  LEFT JOIN queue_tenants t ON t.queue = c.queue AND t.tenant_id = c.tenant_id
 ORDER BY c.queue, c.due + c.running + c.waiting DESC, c.tenant_id;

-- name: queue_rate_windows
-- the busiest rate keys of a queue: starts within the current window
SELECT w.key, l.n AS starts
  FROM queues q
  JOIN rate_windows w ON w.queue = q.name
 CROSS JOIN LATERAL (SELECT count(*) AS n FROM unnest(w.starts) s
                      WHERE s > clock_timestamp() - make_interval(secs => q.rate_period_seconds)) l
 WHERE q.name = %(name)s AND q.rate_limit IS NOT NULL AND l.n > 0
 ORDER BY l.n DESC, w.key
 LIMIT %(limit)s;

-- name: prune_claim_bookkeeping
-- forget rate windows whose starts all left the window, and tenants with no rules, no due jobs at
-- the last listing and no turn owed (they rejoin at the queue's round-robin clock either way).
-- Only for queues whose row lock it gets at once: claims change these rows under that lock.
WITH locked AS (
    SELECT name, rate_limit, rate_period_seconds, fair_vtime FROM queues FOR UPDATE SKIP LOCKED
), windows AS (
    DELETE FROM rate_windows w USING locked q
     WHERE w.queue = q.name
       AND (q.rate_limit IS NULL
            OR w.starts[cardinality(w.starts)] IS NULL
            OR w.starts[cardinality(w.starts)] < now() - make_interval(secs => q.rate_period_seconds))
    RETURNING 1
), tenants AS (
    DELETE FROM queue_tenants t USING locked q
     WHERE t.queue = q.name AND NOT t.active AND t.weight IS NULL AND t.max_running IS NULL
       AND t.pass <= q.fair_vtime
    RETURNING 1
)
SELECT (SELECT count(*) FROM windows) + (SELECT count(*) FROM tenants) AS n;


-- batches, workflows and schedules (migrations/0008) --------------------------------------------

-- name: insert_batch
-- a batch: its jobs are inserted in the same transaction with its id
INSERT INTO batches (id, tenant_id, total, callback_url, request_id)
VALUES (%(id)s, %(tenant_id)s, %(total)s, %(callback_url)s, %(request_id)s);

-- name: get_batch
-- one batch, optionally only within a tenant
SELECT * FROM batches WHERE id = %(id)s AND (%(tenant_id)s::text IS NULL OR tenant_id = %(tenant_id)s);

-- name: batch_state_counts
-- the jobs of a batch per state (rows the pruner deleted are counted in the batch row only)
SELECT state, count(*) AS n FROM jobs
 WHERE batch_id = %(id)s AND (%(tenant_id)s::text IS NULL OR tenant_id = %(tenant_id)s)
 GROUP BY state;

-- name: insert_workflow
-- a workflow: its steps' jobs are inserted in the same transaction
INSERT INTO workflows (id, tenant_id, name) VALUES (%(id)s, %(tenant_id)s, %(name)s);

-- name: insert_workflow_job
-- one step's job: waiting for its dependencies (scheduled, never due) or, for a first step, as any
-- job; a unique conflict inserts nothing
INSERT INTO jobs (queue, worker, state, tenant_id, args, meta, tags, priority, max_attempts,
                  batch_id, unique_key, unique_states, scheduled_at, workflow_id)
VALUES (%(queue)s, %(worker)s,
        CASE WHEN %(waiting)s OR %(scheduled_at)s::timestamptz > now() THEN 'scheduled' ELSE 'available' END,
        %(tenant_id)s, %(args)s, %(meta)s, %(tags)s, %(priority)s, %(max_attempts)s,
        %(batch_id)s, %(unique_key)s, %(unique_states)s,
        CASE WHEN %(waiting)s THEN workflow_waiting_at() ELSE coalesce(%(scheduled_at)s::timestamptz, now()) END,
        %(workflow_id)s)
ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND state = ANY (unique_states) DO NOTHING
RETURNING id;

-- name: insert_workflow_step
-- what a step waits for, and its args with their references to earlier steps' outputs
INSERT INTO workflow_steps (job_id, workflow_id, name, depends_on, deps_left, run_on_failure, args_template, not_before)
VALUES (%(job_id)s, %(workflow_id)s, %(name)s, %(depends_on)s, cardinality(%(depends_on)s::bigint[]),
        %(run_on_failure)s, %(args_template)s, %(not_before)s);

-- name: get_workflow
-- one workflow, optionally only within a tenant
SELECT * FROM workflows WHERE id = %(id)s AND (%(tenant_id)s::text IS NULL OR tenant_id = %(tenant_id)s);

-- name: workflow_steps
-- every step of a workflow with its job (NULL columns once the pruner deleted it), in insert order
SELECT s.job_id, s.name, s.depends_on, s.deps_left, s.run_on_failure,
       j.queue, j.worker, j.state, j.attempt, j.max_attempts, j.errors, j.progress,
       (j.state = 'scheduled' AND j.scheduled_at = workflow_waiting_at()) AS waiting
  FROM workflow_steps s LEFT JOIN jobs j ON j.id = s.job_id
 WHERE s.workflow_id = %(id)s
 ORDER BY s.job_id;

-- name: retry_workflow
-- every discarded or cancelled step of a workflow tried again, waiting for what it depends on
SELECT workflow_retry(%(id)s) AS retried;

-- name: insert_schedule
-- a tenant's schedule (its name is unique per tenant)
INSERT INTO schedules (id, tenant_id, name, cron, time_zone, queue, worker, args, meta, tags, priority,
                       max_attempts, misfire, next_run_at)
VALUES (%(id)s, %(tenant_id)s, %(name)s, %(cron)s, %(time_zone)s, %(queue)s, %(worker)s, %(args)s, %(meta)s,
        %(tags)s, %(priority)s, %(max_attempts)s, %(misfire)s, %(next_run_at)s)
ON CONFLICT (tenant_id, name) DO NOTHING
RETURNING *;

-- name: get_schedule
-- one schedule, optionally only within a tenant
SELECT * FROM schedules WHERE id = %(id)s AND (%(tenant_id)s::text IS NULL OR tenant_id = %(tenant_id)s);

-- name: list_schedules
-- a tenant's schedules (everyone's for admin) by name
SELECT * FROM schedules WHERE (%(tenant_id)s::text IS NULL OR tenant_id = %(tenant_id)s)
 ORDER BY tenant_id, name
 LIMIT 500;

-- name: set_schedule_paused
-- pause, or resume from the next occurrence after now (what came due while paused is not run)
UPDATE schedules SET paused = %(paused)s, updated_at = now(),
                     next_run_at = coalesce(%(next_run_at)s, next_run_at)
 WHERE id = %(id)s AND (%(tenant_id)s::text IS NULL OR tenant_id = %(tenant_id)s)
RETURNING *;

-- name: delete_schedule
-- a schedule and its record of occurrences (jobs it inserted stay)
DELETE FROM schedules WHERE id = %(id)s AND (%(tenant_id)s::text IS NULL OR tenant_id = %(tenant_id)s)
RETURNING id;

-- name: due_schedules
-- schedules whose next occurrence came due at `now`, oldest first
SELECT * FROM schedules WHERE NOT paused AND next_run_at <= %(now)s ORDER BY next_run_at LIMIT %(limit)s;

-- name: advance_schedule
-- move a schedule past the occurrences handled now; nothing when another leader already did
UPDATE schedules SET next_run_at = %(next_run_at)s, last_run_at = coalesce(%(fired_at)s, last_run_at)
 WHERE id = %(id)s AND next_run_at = %(was)s AND NOT paused
RETURNING id;

-- name: claim_occurrence
-- one row per (schedule, occurrence): whoever inserts it inserts the occurrence's job
INSERT INTO schedule_runs (schedule_id, occurrence_at) VALUES (%(id)s, %(occurrence_at)s)
ON CONFLICT (schedule_id, occurrence_at) DO NOTHING
RETURNING schedule_id;

-- name: record_occurrence_job
-- the job an occurrence inserted
UPDATE schedule_runs SET job_id = %(job_id)s WHERE schedule_id = %(id)s AND occurrence_at = %(occurrence_at)s;

-- name: prune_groups
-- delete workflows and batches older than max_age_seconds none of whose jobs is left, and the record
-- of schedule occurrences older than that (a bounded batch of each)
WITH old_workflows AS (
    DELETE FROM workflows WHERE id IN (
        SELECT w.id FROM workflows w
         WHERE w.inserted_at < now() - make_interval(secs => %(max_age_seconds)s)
           AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.workflow_id = w.id)
         LIMIT %(limit)s)
    RETURNING 1
), old_batches AS (
    DELETE FROM batches WHERE id IN (
        SELECT b.id FROM batches b
         WHERE b.inserted_at < now() - make_interval(secs => %(max_age_seconds)s)
           AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.batch_id = b.id)
         LIMIT %(limit)s)
    RETURNING 1
), old_runs AS (
    DELETE FROM schedule_runs WHERE (schedule_id, occurrence_at) IN (
        SELECT schedule_id, occurrence_at FROM schedule_runs
         WHERE inserted_at < now() - make_interval(secs => %(max_age_seconds)s)
         LIMIT %(limit)s)
    RETURNING 1
)
SELECT (SELECT count(*) FROM old_workflows) AS workflows, (SELECT count(*) FROM old_batches) AS batches,
       (SELECT count(*) FROM old_runs) AS runs;

-- name: flush_job_events
-- send up to max logged job events on cp_events (migrations/0012); 0 when none or another flush runs
SELECT job_events_flush(%(max)s) AS sent;
