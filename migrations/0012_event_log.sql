-- Job events leave the writer's transaction through a log, not NOTIFY (issue 15).
--
-- Until now every claim and completion NOTIFYd `cp_events` from a trigger (0006, 0010). A
-- transaction that NOTIFYs takes one database-wide lock at commit and holds it through its WAL
-- flush, so every claiming and completing connection of every machine committed one after
-- another, one fsync each, and group commit never happened: with 8 concurrent claimers the
-- engine ran at about 1,500-2,000 jobs/s with those notifications and about 2,400 without them
-- (`make bench` claimers, alternating runs). Now the state-change and progress triggers append
-- each event to `job_event_log` (unlogged: no WAL, no lock), and `job_events_flush` (called
-- every few milliseconds by each API process's event hub, functions/ingress/event_hub.py) moves
-- them to `cp_events` in the very shape 0006 described. Listeners are unchanged.
--
-- Inserts still notify `inserted` at their commit (0006): an insert that makes jobs available
-- NOTIFYs `cp_jobs` anyway, so it takes that lock regardless, and a client that creates a job
-- and then opens its event stream must not receive the `inserted` event after the job's current
-- state. A job's later events are logged after its insert committed, so they are sent after it.
--
-- What holds, and why:
-- - Nothing is sent twice or lost: one transaction deletes events from the log and notifies
--   them, so both happen or neither does. An event whose transaction has not committed is not
--   visible to the flush yet and goes with a later one; one rolled back never existed.
-- - One flush at a time (a transaction advisory lock, tried, never waited for), each in event id
--   order, so every listener sees the same order. A job's events keep their order: its next
--   change can only commit after the previous one did (the row lock), so the previous event is
--   in the same flush (with a smaller id, taken earlier from the sequence) or an earlier one.
--   Across jobs, the order is that of flushes, then ids: no longer exactly commit order.
-- - A crash of Postgres empties the unlogged log; it also drops every listener, which tells its
--   streams to `reset` (they may have missed events), as before.
-- - Hubs flush every few milliseconds; the dispatcher's leader also flushes every second, so
--   the log stays short while no API process runs (nobody listens then: the events go nowhere).
-- - Like any queue in a table, flushing slows while a long transaction keeps deleted rows from
--   being vacuumed (each flush steps over them in the index).

CREATE UNLOGGED TABLE job_event_log (
    id    bigint PRIMARY KEY,  -- the event id, from job_event_seq
    event json NOT NULL        -- [event id, type, job id, state, queue, tenant, attempt, batch id]
);

CREATE OR REPLACE FUNCTION jobs_event_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_id bigint := nextval('job_event_seq');
BEGIN
    INSERT INTO job_event_log (id, event) VALUES (v_id, json_build_array(
        v_id,
        CASE
            WHEN NEW.state IN ('executing', 'completed', 'cancelled') THEN NEW.state
            WHEN NEW.state IN ('retryable', 'discarded') AND OLD.state = 'executing'
                 AND NEW.errors -> -1 ->> 'kind' = 'rescued' THEN 'rescued'
            WHEN NEW.state IN ('retryable', 'discarded') THEN NEW.state
            WHEN NEW.state = 'scheduled' AND OLD.state = 'executing' THEN 'snoozed'
            WHEN NEW.state = 'available' AND OLD.state = 'executing' THEN 'handed_back'
            WHEN NEW.state = 'available' AND OLD.state IN ('discarded', 'cancelled') THEN 'retried'
            ELSE NEW.state
        END,
        NEW.id, NEW.state, NEW.queue, NEW.tenant_id, NEW.attempt, left(NEW.batch_id, 100)));
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION jobs_event_progress() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_id bigint := nextval('job_event_seq');
BEGIN
    INSERT INTO job_event_log (id, event) VALUES (v_id, json_build_array(
        v_id, 'progress', NEW.id, NEW.state, NEW.queue, NEW.tenant_id, NEW.attempt, left(NEW.batch_id, 100)));
    RETURN NULL;
END
$$;

-- Send up to p_max logged events on `cp_events` (in 0006's parts) and remove them from the log,
-- in the caller's transaction. Returns how many were sent; 0 also when another flush is under way.
CREATE FUNCTION job_events_flush(p_max integer) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    v_events json[];
BEGIN
    IF NOT pg_try_advisory_xact_lock(7420012) THEN
        RETURN 0;
    END IF;
    -- A statement of its own, so its snapshot is taken after the lock: it sees the log as the
    -- previous flush left it.
    WITH taken AS (
        DELETE FROM job_event_log
         -- = ANY (ARRAY(...)), not IN (...): a semi-join plan would scan the whole log once it is large
         WHERE id = ANY (ARRAY(SELECT id FROM job_event_log ORDER BY id LIMIT p_max))
        RETURNING id, event
    )
    SELECT array_agg(event ORDER BY id) INTO v_events FROM taken;
    IF v_events IS NULL THEN
        RETURN 0;
    END IF;
    PERFORM jobs_events_notify(v_events);
    RETURN cardinality(v_events);
END
$$;
