-- Callbacks only to https URLs, whatever wrote meta.callbackUrl (the API now refuses the
-- reserved meta keys; this holds for rows written before, or by any other path).

CREATE OR REPLACE FUNCTION jobs_enqueue_callback() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_outputs jsonb := CASE WHEN jsonb_typeof(NEW.result -> 'outputs') = 'array'
                            THEN NEW.result -> 'outputs' ELSE '[]'::jsonb END;
    v_error jsonb := CASE WHEN jsonb_array_length(NEW.errors) > 0 THEN NEW.errors -> -1 ELSE 'null'::jsonb END;
BEGIN
    -- Only an https URL, as options.callbackUrl accepts: meta is also written by people (the API
    -- refuses the reserved key there, and this holds whatever path a row took).
    IF jsonb_typeof(NEW.meta -> 'callbackUrl') IS DISTINCT FROM 'string'
       OR NEW.meta ->> 'callbackUrl' NOT LIKE 'https://_%' THEN
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

