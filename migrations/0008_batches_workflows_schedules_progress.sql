-- Batches, workflows, schedules and progress (issue 14).
--
-- 1. progress: what a handler reported through ctx.progress(...), written with the heartbeat
--    (never a row update per item) and with the completion.
-- 2. batches: jobs posted together. The counters of final states are kept by the statement that
--    changes them (a trigger), under the batch row's lock, so "every job is final" is seen by
--    exactly one transaction, which enqueues the batch's callback; they also outlive the pruner.
-- 3. workflows: a DAG of jobs. A step that waits for others is `scheduled` at workflow_waiting_at()
--    (9999-12-31: the stager only stages what is due, the claim only takes `available`, and
--    unlike 'infinity' every client can read it as a date), with the number of
--    dependencies still open in workflow_steps.deps_left. Each dependency that ends decrements it
--    (an UPDATE: concurrent completions serialise on the row and each sees the other's
--    decrement), and the one that brings it to 0 promotes the step, resolving its references to
--    the outputs of its dependencies (same tenant, completing claim only). A dependency that is
--    discarded or cancelled cancels its dependents with a reason, unless they run anyway.
-- 4. schedules: cron templates of jobs; schedule_runs holds one row per (schedule, occurrence),
--    inserted with the occurrence's job, so an occurrence is inserted once whoever tries.

ALTER TABLE jobs ADD COLUMN progress jsonb;
ALTER TABLE jobs ADD COLUMN workflow_id uuid;
CREATE INDEX jobs_workflow_idx ON jobs (workflow_id) WHERE workflow_id IS NOT NULL;

-- The scheduled_at of a workflow step that waits for its dependencies: never due.
CREATE FUNCTION workflow_waiting_at() RETURNS timestamptz LANGUAGE sql IMMUTABLE AS
$$ SELECT '9999-12-31 00:00:00+00'::timestamptz $$;

-- A retried workflow step waits again for its dependencies: discarded/cancelled -> scheduled.
CREATE OR REPLACE FUNCTION jobs_check_transition() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (OLD.state, NEW.state) IN (
        ('scheduled', 'available'), ('retryable', 'available'),
        ('available', 'executing'),
        ('executing', 'completed'), ('executing', 'retryable'), ('executing', 'discarded'),
        ('executing', 'cancelled'), ('executing', 'scheduled'), ('executing', 'available'),
        ('scheduled', 'cancelled'), ('available', 'cancelled'), ('retryable', 'cancelled'),
        ('discarded', 'available'), ('cancelled', 'available'),
        ('discarded', 'scheduled'), ('cancelled', 'scheduled')
    ) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'job %: transition % -> % is not allowed', OLD.id, OLD.state, NEW.state
        USING ERRCODE = 'check_violation';
END
$$;

-- batches ---------------------------------------------------------------------------------------

CREATE TABLE batches (
    id              text PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 64),
    tenant_id       text        NOT NULL CHECK (length(tenant_id) BETWEEN 1 AND 128),
    total           integer     NOT NULL CHECK (total >= 1),
    completed       integer     NOT NULL DEFAULT 0 CHECK (completed >= 0),
    discarded       integer     NOT NULL DEFAULT 0 CHECK (discarded >= 0),
    cancelled       integer     NOT NULL DEFAULT 0 CHECK (cancelled >= 0),
    callback_url    text CHECK (callback_url IS NULL OR callback_url LIKE 'https://_%'),
    callback_job_id bigint,
    request_id      text,
    inserted_at     timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,  -- the first time every job was final
    CONSTRAINT batches_counts_within_total CHECK (completed + discarded + cancelled <= total)
);
CREATE INDEX batches_tenant_idx ON batches (tenant_id, inserted_at DESC);

-- workflows -------------------------------------------------------------------------------------

CREATE TABLE workflows (
    id          uuid PRIMARY KEY,
    tenant_id   text        NOT NULL CHECK (length(tenant_id) BETWEEN 1 AND 128),
    name        text CHECK (name IS NULL OR length(name) BETWEEN 1 AND 128),
    inserted_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE workflow_steps (
    job_id         bigint PRIMARY KEY,
    workflow_id    uuid    NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
    name           text    NOT NULL CHECK (length(name) BETWEEN 1 AND 64),
    depends_on     bigint[] NOT NULL DEFAULT '{}',
    deps_left      integer NOT NULL CHECK (deps_left >= 0),
    run_on_failure boolean NOT NULL DEFAULT false,
    args_template  jsonb   NOT NULL,           -- args with references, resolved at promotion
    not_before     timestamptz,                -- the step's own scheduledAt/scheduleIn
    UNIQUE (workflow_id, name)
);

-- The value of `p_value` with every reference {"$fromStep": name, "output": output name}
-- replaced by the key of that output of that step: a completed job of the same workflow and
-- tenant, and only a key under the prefix of the claim that completed it. NULL if any reference
-- cannot be resolved.
CREATE FUNCTION workflow_resolve(p_value jsonb, p_workflow uuid, p_tenant text) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_out jsonb;
    v_key text;
    v_item jsonb;
    v_name text;
    v_child jsonb;
BEGIN
    IF jsonb_typeof(p_value) = 'object' THEN
        IF p_value ? '$fromStep' THEN
            SELECT o ->> 'key' INTO v_key
              FROM workflow_steps s
              JOIN jobs d ON d.id = s.job_id
             CROSS JOIN LATERAL jsonb_array_elements(
                   CASE WHEN jsonb_typeof(d.result -> 'outputs') = 'array' THEN d.result -> 'outputs'
                        ELSE '[]'::jsonb END) o
             WHERE s.workflow_id = p_workflow AND s.name = p_value ->> '$fromStep'
               AND d.tenant_id = p_tenant AND d.workflow_id = p_workflow
               AND d.state = 'completed' AND d.claim_token IS NOT NULL
               AND jsonb_typeof(o) = 'object' AND o ->> 'name' = p_value ->> 'output'
               AND starts_with(o ->> 'key', 'tenants/' || p_tenant || '/jobs/' || d.id || '/'
                                            || replace(d.claim_token::text, '-', '') || '/')
             LIMIT 1;
            RETURN to_jsonb(v_key);  -- NULL when not found
        END IF;
        v_out := '{}'::jsonb;
        FOR v_name, v_item IN SELECT key, value FROM jsonb_each(p_value) LOOP
            v_child := workflow_resolve(v_item, p_workflow, p_tenant);
            IF v_child IS NULL THEN
                RETURN NULL;
            END IF;
            v_out := v_out || jsonb_build_object(v_name, v_child);
        END LOOP;
        RETURN v_out;
    ELSIF jsonb_typeof(p_value) = 'array' THEN
        v_out := '[]'::jsonb;
        FOR v_item IN SELECT value FROM jsonb_array_elements(p_value) LOOP
            v_child := workflow_resolve(v_item, p_workflow, p_tenant);
            IF v_child IS NULL THEN
                RETURN NULL;
            END IF;
            v_out := v_out || jsonb_build_array(v_child);
        END LOOP;
        RETURN v_out;
    END IF;
    RETURN p_value;
END
$$;

-- A waiting step whose dependencies are all done: its references resolved, it becomes available
-- (or scheduled at its own not_before). One it cannot resolve is cancelled with the reason.
CREATE FUNCTION workflow_promote(p_job bigint) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_job jobs;
    v_step workflow_steps;
    v_args jsonb;
BEGIN
    SELECT * INTO v_job FROM jobs WHERE id = p_job AND state = 'scheduled' AND scheduled_at = workflow_waiting_at() FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    SELECT * INTO v_step FROM workflow_steps WHERE job_id = p_job;
    v_args := workflow_resolve(v_step.args_template, v_step.workflow_id, v_job.tenant_id);
    IF v_args IS NULL THEN
        UPDATE jobs SET state = 'cancelled', cancelled_at = now(),
                        errors = errors || jsonb_build_array(jsonb_build_object(
                            'attempt', attempt, 'at', now(), 'kind', 'unresolved-reference',
                            'error', 'an output this step refers to does not exist (its step did not complete, '
                                     || 'or recorded no output of that name)'))
         WHERE id = p_job;
        RETURN;
    END IF;
    UPDATE jobs SET args = v_args,
                    state = CASE WHEN v_step.not_before > now() THEN 'scheduled' ELSE 'available' END,
                    scheduled_at = greatest(now(), coalesce(v_step.not_before, now()))
     WHERE id = p_job;
END
$$;

-- A step became final: its dependents move on (completed, or failed for those that run anyway)
-- or are cancelled with the reason. Dependents in job-id order: concurrent finishers lock them
-- in one order.
CREATE FUNCTION workflow_step_finished(p_job bigint, p_state text, p_workflow uuid) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_dependent workflow_steps;
    v_left integer;
    v_name text;
BEGIN
    -- Shared with other finishing steps, exclusive with a retry of the workflow (which recounts
    -- what every step waits for): a retry sees these completions committed, or they wait for it.
    PERFORM 1 FROM workflows WHERE id = p_workflow FOR SHARE;
    SELECT name INTO v_name FROM workflow_steps WHERE job_id = p_job;
    FOR v_dependent IN
        SELECT * FROM workflow_steps WHERE workflow_id = p_workflow AND p_job = ANY (depends_on) ORDER BY job_id
    LOOP
        IF p_state = 'completed' OR v_dependent.run_on_failure THEN
            UPDATE workflow_steps SET deps_left = deps_left - 1
             WHERE job_id = v_dependent.job_id AND deps_left > 0
            RETURNING deps_left INTO v_left;
            IF FOUND AND v_left = 0 THEN
                PERFORM workflow_promote(v_dependent.job_id);
            END IF;
        ELSE
            -- Cancelling it fires this trigger again: the cancellation runs down the DAG.
            UPDATE jobs SET state = 'cancelled', cancelled_at = now(),
                            errors = errors || jsonb_build_array(jsonb_build_object(
                                'attempt', attempt, 'at', now(), 'kind', 'dependency-failed',
                                'error', format('step %s it depends on was %s', coalesce(v_name, p_job::text), p_state)))
             WHERE id = v_dependent.job_id AND state = 'scheduled' AND scheduled_at = workflow_waiting_at();
        END IF;
    END LOOP;
END
$$;

-- After any UPDATE of jobs: batch counters (and the batch callback) and workflow moves, for the
-- rows whose state went into or out of a final state. Cheap for every other statement.
CREATE FUNCTION jobs_batches_and_workflows() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_delta record;
    v_batch batches;
    v_callback bigint;
    v_step record;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM new_rows WHERE batch_id IS NOT NULL OR workflow_id IS NOT NULL) THEN
        RETURN NULL;
    END IF;
    -- Batches in id order: concurrent statements lock their rows in one order.
    FOR v_delta IN
        SELECT n.batch_id,
               sum((n.state = 'completed')::int - (o.state = 'completed')::int) AS completed,
               sum((n.state = 'discarded')::int - (o.state = 'discarded')::int) AS discarded,
               sum((n.state = 'cancelled')::int - (o.state = 'cancelled')::int) AS cancelled
          FROM new_rows n JOIN old_rows o ON o.id = n.id
         WHERE n.batch_id IS NOT NULL AND n.state IS DISTINCT FROM o.state
           AND (n.state IN ('completed', 'discarded', 'cancelled') OR o.state IN ('completed', 'discarded', 'cancelled'))
         GROUP BY n.batch_id
         ORDER BY n.batch_id
    LOOP
        UPDATE batches SET completed = completed + v_delta.completed, discarded = discarded + v_delta.discarded,
                           cancelled = cancelled + v_delta.cancelled
         WHERE id = v_delta.batch_id
        RETURNING * INTO v_batch;
        IF FOUND AND v_batch.finished_at IS NULL
           AND v_batch.completed + v_batch.discarded + v_batch.cancelled = v_batch.total THEN
            v_callback := NULL;
            IF v_batch.callback_url IS NOT NULL THEN
                INSERT INTO jobs (queue, worker, tenant_id, args, meta, max_attempts)
                VALUES ('webhooks', 'DeliverWebhook', v_batch.tenant_id,
                        jsonb_build_object(
                            'url', v_batch.callback_url,
                            'event', 'batch.finished',
                            'payload', jsonb_build_object(
                                'batchId', v_batch.id, 'tenantId', v_batch.tenant_id, 'total', v_batch.total,
                                'counts', jsonb_build_object('completed', v_batch.completed,
                                                             'discarded', v_batch.discarded,
                                                             'cancelled', v_batch.cancelled)),
                            'method', 'POST', 'headers', '{}'::jsonb, 'timeoutSeconds', 15.0),
                        jsonb_build_object('requestId', v_batch.request_id, 'callbackForBatch', v_batch.id),
                        8)
                RETURNING id INTO v_callback;
            END IF;
            -- Once: a batch that finished stays finished for its callback, even if a job of it is
            -- retried by hand afterwards.
            UPDATE batches SET finished_at = now(), callback_job_id = v_callback WHERE id = v_batch.id;
        END IF;
    END LOOP;
    FOR v_step IN
        SELECT n.id, n.state, n.workflow_id
          FROM new_rows n JOIN old_rows o ON o.id = n.id
         WHERE n.workflow_id IS NOT NULL AND n.state IS DISTINCT FROM o.state
           AND n.state IN ('completed', 'discarded', 'cancelled')
         ORDER BY n.id
    LOOP
        PERFORM workflow_step_finished(v_step.id, v_step.state, v_step.workflow_id);
    END LOOP;
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_batches_and_workflows AFTER UPDATE ON jobs
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_batches_and_workflows();

-- A retry of a whole workflow: every discarded or cancelled step waits again; what each waiting
-- step waits for is counted afresh; those with nothing left are promoted. Returns how many steps
-- were retried.
CREATE FUNCTION workflow_retry(p_workflow uuid) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    v_count integer;
    v_step bigint;
BEGIN
    PERFORM 1 FROM workflows WHERE id = p_workflow FOR UPDATE;
    UPDATE jobs SET state = 'scheduled', scheduled_at = workflow_waiting_at(), attempt = 0, discarded_at = NULL,
                    cancelled_at = NULL, attempted_by = NULL, heartbeat_at = NULL, result = NULL,
                    claim_token = NULL, progress = NULL
     WHERE workflow_id = p_workflow AND state IN ('discarded', 'cancelled');
    GET DIAGNOSTICS v_count = ROW_COUNT;
    IF v_count = 0 THEN
        RETURN 0;
    END IF;
    UPDATE workflow_steps ws
       SET deps_left = (SELECT count(*) FROM jobs d WHERE d.id = ANY (ws.depends_on) AND d.state <> 'completed')
      FROM jobs j
     WHERE j.id = ws.job_id AND ws.workflow_id = p_workflow
       AND j.state = 'scheduled' AND j.scheduled_at = workflow_waiting_at();
    FOR v_step IN
        SELECT ws.job_id FROM workflow_steps ws JOIN jobs j ON j.id = ws.job_id
         WHERE ws.workflow_id = p_workflow AND ws.deps_left = 0
           AND j.state = 'scheduled' AND j.scheduled_at = workflow_waiting_at()
         ORDER BY ws.job_id
    LOOP
        PERFORM workflow_promote(v_step);
    END LOOP;
    RETURN v_count;
END
$$;

-- schedules -------------------------------------------------------------------------------------

CREATE TABLE schedules (
    id          uuid PRIMARY KEY,
    tenant_id   text        NOT NULL CHECK (length(tenant_id) BETWEEN 1 AND 128),
    name        text        NOT NULL CHECK (length(name) BETWEEN 1 AND 128),
    cron        text        NOT NULL CHECK (length(cron) BETWEEN 1 AND 200),
    time_zone   text        NOT NULL CHECK (length(time_zone) BETWEEN 1 AND 64),
    queue       text        NOT NULL CHECK (length(queue) BETWEEN 1 AND 64),
    worker      text        NOT NULL CHECK (length(worker) BETWEEN 1 AND 128),
    args        jsonb       NOT NULL,
    meta        jsonb       NOT NULL DEFAULT '{}',
    tags        text[]      NOT NULL DEFAULT '{}',
    priority    smallint    NOT NULL DEFAULT 0 CHECK (priority BETWEEN 0 AND 9),
    max_attempts integer    NOT NULL CHECK (max_attempts BETWEEN 1 AND 100),
    misfire     text        NOT NULL CHECK (misfire IN ('skip', 'runOnce')),
    paused      boolean     NOT NULL DEFAULT false,
    next_run_at timestamptz NOT NULL,    -- the next occurrence not yet handled
    last_run_at timestamptz,             -- the last occurrence that inserted a job
    inserted_at timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, name)
);
CREATE INDEX schedules_due_idx ON schedules (next_run_at) WHERE NOT paused;

CREATE TABLE schedule_runs (
    schedule_id   uuid        NOT NULL REFERENCES schedules (id) ON DELETE CASCADE,
    occurrence_at timestamptz NOT NULL,
    job_id        bigint,                -- set in the same transaction, right after the claim
    inserted_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (schedule_id, occurrence_at)
);
