-- Job outcome counters that survive the pruner.
--
-- /metrics counts outcomes (completed, discarded, cancelled) per queue from the jobs table at
-- scrape time, because the machines that produce them are short-lived processes nobody
-- scrapes. The pruner deletes old final jobs, which would make those counters go down; this
-- table keeps what was deleted, so "rows still in jobs + rows pruned" only grows. It is
-- written by pruning alone (a statement trigger on DELETE), never on the hot path of claims
-- and completions.

CREATE TABLE job_outcomes_pruned (
    queue text   NOT NULL,
    state text   NOT NULL CHECK (state IN ('completed', 'discarded', 'cancelled')),
    count bigint NOT NULL CHECK (count >= 0),
    PRIMARY KEY (queue, state)
);

CREATE FUNCTION jobs_count_pruned() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- ORDER BY: concurrent prunes lock the counter rows in the same order, so never deadlock.
    INSERT INTO job_outcomes_pruned (queue, state, count)
    SELECT queue, state, count(*) FROM old_rows
     WHERE state IN ('completed', 'discarded', 'cancelled')
     GROUP BY queue, state
     ORDER BY queue, state
    ON CONFLICT (queue, state) DO UPDATE SET count = job_outcomes_pruned.count + EXCLUDED.count;
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_count_pruned AFTER DELETE ON jobs
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION jobs_count_pruned();
