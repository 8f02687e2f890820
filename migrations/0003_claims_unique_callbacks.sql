-- Claims, unique keys and callbacks made structural (issue 9).
--
-- 1. Every claim gets a fresh token. (attempt, machine) does not identify a claim: snooze and
--    hand-back give the attempt back and an explicit retry resets it, so a stalled holder could
--    match a later claim of the same machine. Fenced writes and output prefixes use the token.
-- 2. A unique key covers every in-flight state, so no transition between in-flight states can
--    meet another row's key: only an explicit retry out of a final state can, and it answers 409.
-- 3. A job that becomes final enqueues its callback in the same statement, whoever made it final
--    (machine, lifeline, admin rescue, cancel).

ALTER TABLE jobs ADD COLUMN claim_token uuid;

-- Rows executing while this migrates get a token too; their holders fence by the old columns
-- until they exit, which the new code never does again.
UPDATE jobs SET claim_token = gen_random_uuid() WHERE state = 'executing';

ALTER TABLE jobs ADD CONSTRAINT jobs_executing_has_claim
    CHECK (state <> 'executing' OR claim_token IS NOT NULL);

-- Whatever statement claims a job (available -> executing), the row gets a new token: the
-- fence cannot be forgotten by a new claim path.
CREATE FUNCTION jobs_new_claim_token() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.claim_token := gen_random_uuid();
    RETURN NEW;
END
$$;

CREATE TRIGGER jobs_claim_token BEFORE UPDATE OF state ON jobs
    FOR EACH ROW WHEN (NEW.state = 'executing' AND OLD.state IS DISTINCT FROM 'executing')
    EXECUTE FUNCTION jobs_new_claim_token();

-- Unique keys that do not cover every in-flight state are settled first: if widening them would
-- put two rows with one key in covered states, the younger keeps running without the key, and
-- says why in its meta.
WITH future AS (
    SELECT id, unique_key,
           state = ANY (unique_states || ARRAY['scheduled', 'available', 'executing', 'retryable']) AS covered,
           state = ANY (unique_states) AS covered_now
      FROM jobs
     WHERE unique_key IS NOT NULL
), ranked AS (
    SELECT id, row_number() OVER (PARTITION BY unique_key ORDER BY covered_now DESC, id) AS rn
      FROM future
     WHERE covered
)
UPDATE jobs SET unique_key = NULL, unique_states = NULL,
                meta = meta || jsonb_build_object('uniqueReleased',
                    'migration 0003: another job already held this unique key in an in-flight state')
  FROM ranked
 WHERE jobs.id = ranked.id AND ranked.rn > 1;

UPDATE jobs
   SET unique_states = ARRAY(SELECT DISTINCT s
                               FROM unnest(unique_states || ARRAY['scheduled', 'available', 'executing', 'retryable']) s
                              ORDER BY s)
 WHERE unique_key IS NOT NULL
   AND NOT unique_states @> ARRAY['scheduled', 'available', 'executing', 'retryable'];

ALTER TABLE jobs ADD CONSTRAINT jobs_unique_states_in_flight CHECK (
    unique_states IS NULL
    OR (unique_states @> ARRAY['scheduled', 'available', 'executing', 'retryable']
        AND unique_states <@ ARRAY['scheduled', 'available', 'executing', 'retryable',
                                   'completed', 'discarded', 'cancelled']));

-- Callbacks: the webhooks job telling meta.callbackUrl that a job became final, inserted by the
-- statement that makes it final. Args are a webhooks request (url, event job.<state>, the request
-- model's defaults) whose payload is a small view of the job; tests hold it to the webhooks
-- request model. The error text is capped so a huge message cannot bloat the payload.
CREATE FUNCTION jobs_enqueue_callback() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_outputs jsonb := CASE WHEN jsonb_typeof(NEW.result -> 'outputs') = 'array'
                            THEN NEW.result -> 'outputs' ELSE '[]'::jsonb END;
    v_error jsonb := CASE WHEN jsonb_array_length(NEW.errors) > 0 THEN NEW.errors -> -1 ELSE 'null'::jsonb END;
BEGIN
    IF jsonb_typeof(NEW.meta -> 'callbackUrl') IS DISTINCT FROM 'string' OR NEW.meta ->> 'callbackUrl' = '' THEN
        RETURN NULL;
    END IF;
    IF jsonb_typeof(v_error -> 'error') = 'string' AND length(v_error ->> 'error') > 2000 THEN
        v_error := jsonb_set(v_error, '{error}', to_jsonb(left(v_error ->> 'error', 2000) || '…'));
    END IF;
    INSERT INTO jobs (queue, worker, tenant_id, args, meta, max_attempts)
    VALUES ('webhooks', 'DeliverWebhook', NEW.tenant_id,
            jsonb_build_object(
                'url', NEW.meta ->> 'callbackUrl',
                'event', 'job.' || NEW.state,
                'payload', jsonb_build_object(
                    'id', NEW.id, 'queue', NEW.queue, 'worker', NEW.worker, 'state', NEW.state,
                    'tenantId', NEW.tenant_id, 'attempt', NEW.attempt,
                    'outputKeys', coalesce((SELECT jsonb_agg(o -> 'key') FROM jsonb_array_elements(v_outputs) o
                                             WHERE jsonb_typeof(o -> 'key') = 'string'), '[]'::jsonb),
                    'error', v_error),
                'method', 'POST', 'headers', '{}'::jsonb, 'timeoutSeconds', 15.0),
            jsonb_build_object('requestId', NEW.meta -> 'requestId', 'callbackFor', NEW.id),
            8);
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_final_callback AFTER UPDATE OF state ON jobs
    FOR EACH ROW
    WHEN (NEW.state IN ('completed', 'discarded', 'cancelled') AND OLD.state IS DISTINCT FROM NEW.state
          AND NEW.meta ? 'callbackUrl')
    EXECUTE FUNCTION jobs_enqueue_callback();
