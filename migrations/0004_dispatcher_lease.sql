-- Dispatcher leadership by a lease row, duty error counts, and machine rows the pruner can delete.
--
-- dispatcher_lease: at most one row. The leader renews `expires_at`; a standby takes the row over
-- only once it has expired, so a frozen or vanished leader is replaced within one lease period
-- (functions/dispatcher/lease.py explains why a lease rather than a session advisory lock).
-- `term` grows with every acquisition and names one leadership period in logs.
CREATE TABLE dispatcher_lease (
    name        text PRIMARY KEY DEFAULT 'dispatcher' CHECK (name = 'dispatcher'),
    holder      text        NOT NULL CHECK (length(holder) BETWEEN 1 AND 200),
    term        bigint      NOT NULL CHECK (term >= 1),
    acquired_at timestamptz NOT NULL,
    renewed_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL
);

-- Failures of each dispatcher duty, for dispatcher_duty_errors_total{duty}. Kept in the database
-- because the dispatcher may run in a process nobody scrapes (Fly's `dispatcher` process group).
CREATE TABLE dispatcher_duty_errors (
    duty          text PRIMARY KEY CHECK (length(duty) BETWEEN 1 AND 64),
    errors        bigint      NOT NULL CHECK (errors >= 0),
    last_error    text        NOT NULL,
    last_error_at timestamptz NOT NULL
);

-- Boot-failure backoff: a queue's machines newest first.
CREATE INDEX machines_queue_launched_idx ON machines (queue, launched_at DESC);
-- Pruner: final machines by the time they ended.
CREATE INDEX machines_final_idx ON machines (exited_at) WHERE state IN ('exited', 'failed');

-- machine_launches_total counts machine rows; this keeps the ones the pruner deleted (the same
-- scheme as job_outcomes_pruned in 0002), so the counter never goes down.
CREATE TABLE machine_launches_pruned (
    queue    text   NOT NULL,
    launcher text   NOT NULL,
    count    bigint NOT NULL CHECK (count >= 0),
    PRIMARY KEY (queue, launcher)
);

CREATE FUNCTION machines_count_pruned() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO machine_launches_pruned (queue, launcher, count)
    SELECT queue, launcher, count(*) FROM old_rows
     GROUP BY queue, launcher
     ORDER BY queue, launcher
    ON CONFLICT (queue, launcher) DO UPDATE SET count = machine_launches_pruned.count + EXCLUDED.count;
    RETURN NULL;
END
$$;

CREATE TRIGGER machines_count_pruned AFTER DELETE ON machines
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION machines_count_pruned();
