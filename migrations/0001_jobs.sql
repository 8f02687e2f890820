-- Jobs, queues, machines and idempotency keys.
-- States and transitions follow the architecture spec; the database enforces them, not only Python.

CREATE TABLE jobs (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue         text        NOT NULL CHECK (length(queue) BETWEEN 1 AND 64),
    worker        text        NOT NULL CHECK (length(worker) BETWEEN 1 AND 128),
    state         text        NOT NULL DEFAULT 'available',
    tenant_id     text        NOT NULL CHECK (length(tenant_id) BETWEEN 1 AND 128),
    args          jsonb       NOT NULL DEFAULT '{}',
    meta          jsonb       NOT NULL DEFAULT '{}',
    tags          text[]      NOT NULL DEFAULT '{}',
    priority      smallint    NOT NULL DEFAULT 0,
    attempt       integer     NOT NULL DEFAULT 0,
    max_attempts  integer     NOT NULL DEFAULT 5,
    errors        jsonb       NOT NULL DEFAULT '[]',
    result        jsonb,
    batch_id      text,
    unique_key    text,
    unique_states text[],
    attempted_by  text,
    heartbeat_at  timestamptz,
    inserted_at   timestamptz NOT NULL DEFAULT now(),
    scheduled_at  timestamptz NOT NULL DEFAULT now(),
    attempted_at  timestamptz,
    completed_at  timestamptz,
    cancelled_at  timestamptz,
    discarded_at  timestamptz,

    CONSTRAINT jobs_state_valid CHECK (state IN
        ('scheduled', 'available', 'executing', 'retryable', 'completed', 'discarded', 'cancelled')),
    CONSTRAINT jobs_priority_range CHECK (priority BETWEEN 0 AND 9),
    CONSTRAINT jobs_max_attempts_range CHECK (max_attempts BETWEEN 1 AND 100),
    CONSTRAINT jobs_attempt_range CHECK (attempt BETWEEN 0 AND max_attempts),
    CONSTRAINT jobs_errors_is_array CHECK (jsonb_typeof(errors) = 'array'),
    CONSTRAINT jobs_completed_at_iff_completed CHECK ((state = 'completed') = (completed_at IS NOT NULL)),
    CONSTRAINT jobs_cancelled_at_iff_cancelled CHECK ((state = 'cancelled') = (cancelled_at IS NOT NULL)),
    CONSTRAINT jobs_discarded_at_iff_discarded CHECK ((state = 'discarded') = (discarded_at IS NOT NULL)),
    CONSTRAINT jobs_executing_has_holder CHECK (
        state <> 'executing' OR (attempted_by IS NOT NULL AND attempted_at IS NOT NULL AND attempt >= 1)),
    CONSTRAINT jobs_unique_states_with_key CHECK ((unique_key IS NULL) = (unique_states IS NULL))
);

-- claim: the oldest due job of highest priority in one queue
CREATE INDEX jobs_claim_idx ON jobs (queue, priority, scheduled_at, id) WHERE state = 'available';
-- stager: scheduled and retryable jobs that came due
CREATE INDEX jobs_stage_idx ON jobs (scheduled_at) WHERE state IN ('scheduled', 'retryable');
-- lifeline: executing jobs by heartbeat and holder
CREATE INDEX jobs_executing_idx ON jobs (queue, heartbeat_at) WHERE state = 'executing';
CREATE INDEX jobs_attempted_by_idx ON jobs (attempted_by) WHERE state = 'executing';
-- tenant listing, newest first
CREATE INDEX jobs_tenant_idx ON jobs (tenant_id, id DESC);
CREATE INDEX jobs_batch_idx ON jobs (batch_id) WHERE batch_id IS NOT NULL;
-- pruner: final jobs by the time they became final
CREATE INDEX jobs_final_idx ON jobs ((coalesce(completed_at, discarded_at, cancelled_at)))
    WHERE state IN ('completed', 'discarded', 'cancelled');
-- unique jobs: one row per key while the row is in one of the states the key covers
CREATE UNIQUE INDEX jobs_unique_idx ON jobs (unique_key)
    WHERE unique_key IS NOT NULL AND state = ANY (unique_states);

-- Allowed state transitions; anything else is an error raised by the database itself.
CREATE FUNCTION jobs_check_transition() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (OLD.state, NEW.state) IN (
        ('scheduled', 'available'), ('retryable', 'available'),
        ('available', 'executing'),
        ('executing', 'completed'), ('executing', 'retryable'), ('executing', 'discarded'),
        ('executing', 'cancelled'), ('executing', 'scheduled'), ('executing', 'available'),
        ('scheduled', 'cancelled'), ('available', 'cancelled'), ('retryable', 'cancelled'),
        ('discarded', 'available'), ('cancelled', 'available')
    ) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'job %: transition % -> % is not allowed', OLD.id, OLD.state, NEW.state
        USING ERRCODE = 'check_violation';
END
$$;

CREATE TRIGGER jobs_transition_guard BEFORE UPDATE OF state ON jobs
    FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state) EXECUTE FUNCTION jobs_check_transition();

CREATE TABLE queues (
    name       text PRIMARY KEY CHECK (length(name) BETWEEN 1 AND 64),
    "limit"    integer NOT NULL CHECK ("limit" BETWEEN 0 AND 1000),
    paused     boolean NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE machines (
    id          text PRIMARY KEY,
    queue       text NOT NULL,
    launcher    text NOT NULL,
    state       text NOT NULL DEFAULT 'launching'
        CHECK (state IN ('launching', 'running', 'exited', 'failed')),
    job_id      bigint,
    launched_at timestamptz NOT NULL DEFAULT now(),
    started_at  timestamptz,
    last_seen_at timestamptz,       -- refreshed by the machine's heartbeat, busy or idle
    exited_at   timestamptz,
    exit_code   integer,
    oom_killed  boolean NOT NULL DEFAULT false,
    jobs_run    integer NOT NULL DEFAULT 0,
    detail      jsonb NOT NULL DEFAULT '{}',
    CONSTRAINT machines_exited_at_iff_final CHECK ((state IN ('exited', 'failed')) = (exited_at IS NOT NULL))
);
CREATE INDEX machines_live_idx ON machines (queue) WHERE state IN ('launching', 'running');
CREATE INDEX machines_launched_idx ON machines (launched_at DESC);

CREATE TABLE idempotency_keys (
    tenant_id    text NOT NULL,
    key          text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    request_hash text NOT NULL,
    status       integer,          -- NULL while the first request is in flight
    response     jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, key)
);
CREATE INDEX idempotency_keys_created_idx ON idempotency_keys (created_at);

-- Claim up to `max_jobs` available jobs of one queue for one machine, honouring the queue's
-- fleet-wide limit and pause. Claims of one queue are serialised on its `queues` row; this
-- function is plpgsql (VOLATILE) so the count below takes a fresh snapshot after that lock,
-- which a single SQL statement could not (its snapshot predates the lock wait).
CREATE FUNCTION claim_jobs(p_queue text, p_machine text, p_max_jobs integer, p_prefer_id bigint)
RETURNS SETOF jobs LANGUAGE plpgsql AS $$
DECLARE
    v_limit integer;
    v_paused boolean;
    v_free integer;
    v_claimed integer;
BEGIN
    -- A claim need not wait for its WAL flush (about one fsync off every pickup). If Postgres
    -- crashes before the flush, the claim is forgotten and the job is simply available again;
    -- the machine that thought it held it is fenced out (attempt and holder no longer match).
    PERFORM set_config('synchronous_commit', 'off', true);
    SELECT "limit", paused INTO v_limit, v_paused FROM queues WHERE name = p_queue FOR UPDATE;
    IF NOT FOUND OR v_paused THEN
        RETURN;
    END IF;
    SELECT v_limit - count(*) INTO v_free FROM jobs WHERE queue = p_queue AND state = 'executing';
    v_free := least(v_free, p_max_jobs);
    IF v_free <= 0 THEN
        RETURN;
    END IF;
    -- The job that caused this machine's launch goes first when it is still waiting.
    IF p_prefer_id IS NOT NULL THEN
        RETURN QUERY
        UPDATE jobs SET state = 'executing', attempt = jobs.attempt + 1, attempted_by = p_machine,
                        attempted_at = now(), heartbeat_at = now()
         WHERE jobs.id = (SELECT j.id FROM jobs j
                           WHERE j.id = p_prefer_id AND j.queue = p_queue AND j.state = 'available'
                             AND j.scheduled_at <= now()
                           FOR UPDATE SKIP LOCKED)
        RETURNING jobs.*;
        GET DIAGNOSTICS v_claimed = ROW_COUNT;
        v_free := v_free - v_claimed;
        IF v_free <= 0 THEN
            RETURN;
        END IF;
    END IF;
    RETURN QUERY
    WITH picked AS (
        SELECT j.id FROM jobs j
         WHERE j.queue = p_queue AND j.state = 'available' AND j.scheduled_at <= now()
         ORDER BY j.priority, j.scheduled_at, j.id
         LIMIT v_free
         FOR UPDATE SKIP LOCKED
    )
    UPDATE jobs SET state = 'executing', attempt = jobs.attempt + 1, attempted_by = p_machine,
                    attempted_at = now(), heartbeat_at = now()
      FROM picked WHERE jobs.id = picked.id
    RETURNING jobs.*;
END
$$;

-- Enqueue and wake-up are one transaction: any statement that makes jobs available (insert,
-- stager, rescue, retry) notifies their queues on commit, whoever issued it. Postgres folds
-- identical notifications of one transaction, so a bulk insert sends one per queue.
CREATE FUNCTION jobs_notify_available() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('cp_jobs', q.queue)
       FROM (SELECT DISTINCT queue FROM new_rows WHERE state = 'available') q;
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_notify_insert AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION jobs_notify_available();
CREATE TRIGGER jobs_notify_update AFTER UPDATE ON jobs
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION jobs_notify_available();
