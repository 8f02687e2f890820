-- Live job events (GET /events, GET /jobs/{id}/events, GET /jobs/{id}?wait=N).
--
-- Every job insert and state change NOTIFYs `cp_events` in the same transaction, so a listener
-- sees it exactly when it commits, and every listener sees all events in the same (commit) order.
-- Payloads stay small: a JSON array of events, each
--     [event id, type, job id, state, queue, tenant, attempt, batch id]
-- and listeners read anything bigger (the error of a failed attempt, the tags) from the row.
--
-- NOTIFY payloads must stay under 8000 bytes. One event is at most about 2 kB (queue and tenant
-- are bounded by CHECKs, the batch id is cut to 100 characters, JSON escapes a character to at
-- most 6 bytes), and events are grouped by their running byte offset into parts starting every
-- 4000 bytes, so a part is below 4000 + 2 kB + brackets whatever the contents. A bulk insert of
-- 10,000 jobs is one trigger call and a few hundred notifications; a state change is one
-- notification of one event.
--
-- Inserts are announced per statement (a bulk insert is one trigger call), state changes per row
-- (see below). Event ids come from one sequence, so every API instance names an
-- event the same way (functions/ingress/event_hub.py); they are unique but, across concurrent
-- transactions, not in commit order.
--
-- The type names what happened, which the new state alone cannot say (a snooze and a new schedule
-- both end `scheduled`; a rescue and a failed attempt both end `retryable`); shared/vocabulary.py
-- JobEvent holds the same names. A `progress` type (issue 14) would be sent on the same channel,
-- in the same shape, by whatever records progress.

CREATE SEQUENCE job_event_seq;

-- The notifications of a set of events (each a json array, in `seq` order).
CREATE FUNCTION jobs_events_notify(p_events json[]) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('cp_events', part.chunk::text)
       FROM (SELECT json_agg(sized.event ORDER BY sized.n) AS chunk
               FROM (SELECT n, event,
                            (sum(octet_length(event::text) + 2) OVER (ORDER BY n)
                             - (octet_length(event::text) + 2)) / 4000 AS part
                       FROM unnest(p_events) WITH ORDINALITY AS e(event, n)) sized
              GROUP BY sized.part
              ORDER BY sized.part) part;
END
$$;

CREATE FUNCTION jobs_event_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_events json[];
BEGIN
    SELECT array_agg(json_build_array(nextval('job_event_seq'), 'inserted', r.id, r.state, r.queue,
                                      r.tenant_id, r.attempt, left(r.batch_id, 100)))
      INTO v_events
      FROM (SELECT id, state, queue, tenant_id, attempt, batch_id FROM new_rows ORDER BY id) r;
    IF v_events IS NOT NULL THEN
        PERFORM jobs_events_notify(v_events);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_event_insert AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION jobs_event_inserted();

-- State changes: a row trigger whose WHEN clause Postgres evaluates without calling plpgsql, so
-- the updates that change no state (heartbeats, the bulk of a machine's writes) pay nothing, and
-- a claim or completion of one row pays one small call. (A statement trigger with transition
-- tables was measured slower on that path: it runs for every UPDATE, heartbeats included, and
-- joins the old and new rows.) One notification per row: a single event is far below the limit.
CREATE FUNCTION jobs_event_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('cp_events', json_build_array(json_build_array(
        nextval('job_event_seq'),
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
        NEW.id, NEW.state, NEW.queue, NEW.tenant_id, NEW.attempt, left(NEW.batch_id, 100)))::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_event_update AFTER UPDATE OF state ON jobs
    FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state) EXECUTE FUNCTION jobs_event_changed();
