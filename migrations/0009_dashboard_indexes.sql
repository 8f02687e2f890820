-- Indexes for the web dashboard's jobs list and overview (functions/ingress/dashboard/queries.sql
-- and the shared list_jobs query), so both stay index scans on a table of millions of jobs.

-- jobs list filtered by state, newest first: within a tenant, and across tenants for admins
CREATE INDEX jobs_tenant_state_idx ON jobs (tenant_id, state, id DESC);
CREATE INDEX jobs_state_idx ON jobs (state, id DESC);
-- jobs list of one tenant filtered by queue, newest first
CREATE INDEX jobs_tenant_queue_idx ON jobs (tenant_id, queue, id DESC);
-- overview: live jobs per queue and state (counts and the oldest due job), read index-only;
-- partial, so it holds only the jobs still to run, not the completed history
CREATE INDEX jobs_live_idx ON jobs (tenant_id, queue, state, scheduled_at)
    WHERE state IN ('scheduled', 'available', 'executing', 'retryable');
-- overview: one tenant's outcomes of the last hour (admins use jobs_final_idx)
CREATE INDEX jobs_tenant_final_idx ON jobs (tenant_id, (coalesce(completed_at, discarded_at, cancelled_at)))
    WHERE state IN ('completed', 'discarded', 'cancelled');
-- job page: the callback webhook a job's final state enqueued (0005's trigger sets meta.callbackFor)
CREATE INDEX jobs_callback_for_idx ON jobs (((meta ->> 'callbackFor')))
    WHERE meta ? 'callbackFor';
-- Statistics on the time a job became final: the planner ignores the expressions of partial
-- indexes (jobs_final_idx), so without these it guesses a third of the table for "the last hour".
CREATE STATISTICS jobs_final_at_stats ON (coalesce(completed_at, discarded_at, cancelled_at)) FROM jobs;
