-- A new attempt starts without the last attempt's progress.
--
-- `progress` (0008) is what the running attempt's handler last reported. A job that came back
-- (retried after a failure, handed back by a stopping machine, rescued, snoozed, retried by hand)
-- kept it, so its next attempt showed "40 of 50" from the moment it was claimed, in `GET /jobs/{id}`
-- and on the dashboard, until it reported for itself. Whatever statement claims a job already goes
-- through this trigger (0003: every claim gets a new token), so it clears the progress there too,
-- for every claim path. A final job keeps its last attempt's progress for the record; only a new
-- claim clears it. Setting NEW.progress here is not an `UPDATE OF progress`, so no progress event.

CREATE OR REPLACE FUNCTION jobs_new_claim_token() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.claim_token := gen_random_uuid();
    NEW.progress := NULL;
    RETURN NEW;
END
$$;
