-- A `progress` event carries the progress it announces, and a failure which error is its own
-- (issue 14 follow-up). Listeners read it
-- from the row before (0010), when they sent the event: an event sent late, or replayed after a
-- Last-Event-ID, showed what the row held by then, which after a re-claim is nothing (0014
-- clears it) or the next attempt's progress. The event is now
--     [event id, 'progress', job id, state, queue, tenant, attempt, batch id, progress]
-- with the progress as the handler reported it, unless its text is over 1,024 bytes (then NULL,
-- and listeners read the row as before): a NOTIFY payload holds 8,000 bytes and
-- jobs_events_notify (0006) starts a new one every 4,000, so an event must stay well under that.
-- (A progress is {done, total, message} with the message cut to 200 characters by the machine.)
CREATE OR REPLACE FUNCTION jobs_event_progress() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_id bigint := nextval('job_event_seq');
BEGIN
    INSERT INTO job_event_log (id, event) VALUES (v_id, json_build_array(
        v_id, 'progress', NEW.id, NEW.state, NEW.queue, NEW.tenant_id, NEW.attempt, left(NEW.batch_id, 100),
        CASE WHEN octet_length(NEW.progress::text) <= 1024 THEN NEW.progress END));
    RETURN NULL;
END
$$;

-- Likewise a failure (`retryable`, `discarded`, `rescued`) carries which entry of the job's
-- `errors` is its own: their number when it happened (the list only grows), as a 9th element.
-- Listeners picked the entry by attempt, which repeats after a retry by hand (attempt 0 again).
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
        NEW.id, NEW.state, NEW.queue, NEW.tenant_id, NEW.attempt, left(NEW.batch_id, 100),
        CASE WHEN NEW.state IN ('retryable', 'discarded') THEN jsonb_array_length(NEW.errors) END));
    RETURN NULL;
END
$$;
