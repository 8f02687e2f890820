-- Progress in live job events (issue 14): when a running job's reported progress changes, a
-- `progress` event goes out on `cp_events`, in the shape of migration 0006's events
--     [event id, 'progress', job id, state, queue, tenant, attempt, batch id]
-- and listeners read the progress itself from the row, like a failure's error.
--
-- Progress is written with the machine's heartbeat (HEARTBEAT_INTERVAL_SECONDS), never per item,
-- so a job sends at most one progress event per heartbeat. A heartbeat that carries nothing new
-- leaves the value as it was, and the WHEN clause (evaluated without calling plpgsql) skips it.
-- The completion's last report is not sent as progress: the `completed` event follows, and the
-- job's JSON holds it.
CREATE FUNCTION jobs_event_progress() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('cp_events', json_build_array(json_build_array(
        nextval('job_event_seq'), 'progress', NEW.id, NEW.state, NEW.queue, NEW.tenant_id, NEW.attempt,
        left(NEW.batch_id, 100)))::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_event_progress AFTER UPDATE OF progress ON jobs
    FOR EACH ROW
    WHEN (NEW.state = 'executing' AND OLD.state = 'executing' AND OLD.progress IS DISTINCT FROM NEW.progress)
    EXECUTE FUNCTION jobs_event_progress();
