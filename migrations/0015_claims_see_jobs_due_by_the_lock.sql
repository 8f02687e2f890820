-- A claim serves only tenants with a job due for it, and a job is due for a claim when its time has
-- come by the moment the claim holds its queue's lock; and no claim reads the backlog, whatever
-- the statistics its plans were made with (issue 15).
--
-- Due jobs. The tenant listing (0007) counted every available job, due or not, while the picks
-- took only jobs due at the claim statement's start (`now()`). A tenant whose available jobs were
-- not due for the pick was still listed and took a turn it could not use: a claim of one job then
-- came back empty while other tenants had due jobs (a claim lists the tenants at most once, so it
-- could not recover). It happened without any odd write: a job inserted while a claim waits for the
-- queue's row lock is listed (the listing runs after the lock) but was not due at the claim's
-- start. Now the listing and every pick use one cutoff, the time taken after the lock (`v_now`,
-- already the attempt's start and the rate windows' clock), and FIFO attempts start at it too, as
-- the other paths' do (an attempt never starts before its job was due).
--
-- Plans. claim_jobs plans each statement once per connection (0013). The plan tests
-- (tests/shared/db/test_engine_plans.py, test_claim_plans_by_rule.py) now count the pages each
-- claim's scans touch, not only their rows, under every rule, and found plans that read every job:
-- (1) made while `jobs` was empty, FIFO's update by `id = ANY (...)` walked a whole index that has
-- the id as a later column (one page then, cheaper on paper than ten descents of the primary key):
-- 1,400-1,800 pages per claim of 10 at 20,000 jobs. FIFO now locks its picked rows in one
-- statement and updates them by address (ctid) in the next: a TID scan, which no statistics can
-- turn into a scan of anything else. (Two statements: a row updated by someone else after the
-- locking statement's snapshot is locked in its new version, which only a later snapshot sees; in
-- one statement such a claim came back empty, found by an adversarial review.) (2) With another
-- queue's backlog in the table, the fair pick read each chosen tenant's whole backlog through
-- jobs_live_idx and sorted it (10,000 rows per tenant): claim_jobs now also turns sorts off, like
-- sequential scans, so a plan that can read rows in index order does, and a sort is left only
-- where no index has the order (a few tenants, ten jobs). A sort that is off still costs 1e10 in
-- the planner's sums, enough to make Postgres JIT-compile the statement on every call (about 0.4 s
-- per fair claim: 25 jobs/s in `make bench` fairness); JIT is off in both functions, whose
-- statements are small. The listing steps and the running
-- counts are ordered as the index meant for them (jobs_tenant_claim_idx, jobs_executing_idx), so
-- only that index can serve them: the general path's count per tenant walked all of jobs_live_idx
-- (every live job of every queue) before. (3) The job a machine was launched for is looked up by
-- id once per claim that names it, with a plan made for that call (EXECUTE: one per machine
-- launch); a kept plan read it through an index whose first column it did not constrain.
--
-- The listing skips, inside jobs_tenant_claim_idx, the available jobs not yet due; no path stores
-- such jobs for long (ingress and the stager write jobs for later as `scheduled`). Nothing else
-- changes from 0013.

CREATE OR REPLACE FUNCTION claim_list_tenants(p_queue text, p_vtime double precision, p_now timestamptz)
RETURNS void LANGUAGE plpgsql
-- Each step below is ordered as jobs_tenant_claim_idx is, and no step may sort: only that index
-- can serve it, whatever the statistics say (with `scheduled_at` in the condition and ordered by
-- the tenant alone, a plan walked jobs_tenant_idx through other queues' jobs of the same tenants).
SET enable_seqscan = off
SET enable_sort = off
SET jit = off
AS $$
BEGIN
    WITH RECURSIVE active(tenant_id) AS (
        (SELECT j.tenant_id FROM jobs j
          WHERE j.queue = p_queue AND j.state = 'available' AND j.scheduled_at <= p_now
          ORDER BY j.tenant_id, j.priority, j.scheduled_at, j.id LIMIT 1)
        UNION ALL
        SELECT (SELECT j.tenant_id FROM jobs j
                 WHERE j.queue = p_queue AND j.state = 'available' AND j.tenant_id > a.tenant_id
                   AND j.scheduled_at <= p_now
                 ORDER BY j.tenant_id, j.priority, j.scheduled_at, j.id LIMIT 1)
          FROM active a WHERE a.tenant_id IS NOT NULL
    ), found AS (
        SELECT a.tenant_id FROM active a WHERE a.tenant_id IS NOT NULL
    ), gone AS (
        UPDATE queue_tenants t SET active = false
         WHERE t.queue = p_queue AND t.active AND t.tenant_id NOT IN (SELECT f.tenant_id FROM found f)
    ), came AS (
        INSERT INTO queue_tenants AS t (queue, tenant_id, pass, active)
        SELECT p_queue, f.tenant_id, p_vtime, true FROM found f
         WHERE NOT EXISTS (SELECT 1 FROM queue_tenants x
                            WHERE x.queue = p_queue AND x.tenant_id = f.tenant_id AND x.active)
        ON CONFLICT (queue, tenant_id) DO UPDATE SET active = true
    )
    UPDATE queues SET tenants_scanned_at = p_now WHERE name = p_queue;
END
$$;

-- As in 0013, with the one cutoff (`v_now`) for due jobs in every pick (FIFO's attempts start at
-- it too), FIFO's lock and then update by ctid, counts in jobs_executing_idx's order, the launch's
-- job read by EXECUTE, and sorts off (see the header).
CREATE OR REPLACE FUNCTION claim_jobs(p_queue text, p_machine text, p_max_jobs integer, p_prefer_id bigint)
RETURNS SETOF jobs LANGUAGE plpgsql
-- Every statement below is planned once per connection, not per call, and reads indexes in their
-- order where one has it (see the header).
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_sort = off
SET jit = off
AS $$
DECLARE
    v_q queues%ROWTYPE;
    v_free integer;
    v_claimed integer;
    v_now timestamptz;
    v_ids bigint[];
    v_vtime double precision;
    v_lookahead integer;
    v_capped boolean;
    v_prefer_tenant text;
    v_prefer_priority smallint;
    v_prefer_scheduled timestamptz;
    v_prefer_args jsonb;
    v_ctid tid;
    v_ctids tid[];
    v_scanned boolean := false;
    v_round integer;
    v_plain boolean;
BEGIN
    -- A claim need not wait for its WAL flush (about one fsync off every pickup). If Postgres
    -- crashes before the flush, the claim is forgotten and the job is simply available again;
    -- the machine that thought it held it is fenced out (attempt and holder no longer match).
    PERFORM set_config('synchronous_commit', 'off', true);
    SELECT * INTO v_q FROM queues WHERE name = p_queue FOR UPDATE;
    IF NOT FOUND OR v_q.paused THEN
        RETURN;
    END IF;
    -- (in jobs_executing_idx's order: no other index can give it, and sorts are off)
    SELECT v_q."limit" - count(*) INTO v_free
      FROM (SELECT FROM jobs j WHERE j.queue = p_queue AND j.state = 'executing' ORDER BY j.heartbeat_at) e;
    v_free := least(v_free, p_max_jobs);
    IF v_free <= 0 THEN
        RETURN;
    END IF;
    v_capped := v_q.tenant_limit IS NOT NULL
        OR EXISTS (SELECT 1 FROM queue_tenants t WHERE t.queue = p_queue AND t.max_running IS NOT NULL);

    -- Taken after the lock: start times of one queue's claims only move forward, so the rate
    -- windows (and attempted_at, which the windows record) agree with every other claim's.
    v_now := clock_timestamp();
    v_plain := NOT (v_q.fair OR v_capped OR v_q.rate_limit IS NOT NULL);
    IF v_q.fair AND NOT v_capped AND v_q.rate_limit IS NULL THEN
        -- Fairness alone, and one tenant with due jobs: FIFO is that tenant's fair order.
        IF v_q.tenants_scanned_at IS NULL OR v_now - v_q.tenants_scanned_at > interval '50 milliseconds' THEN
            PERFORM claim_list_tenants(p_queue, v_q.fair_vtime, v_now);
            v_scanned := true;
        END IF;
        v_plain := NOT EXISTS (SELECT FROM queue_tenants t WHERE t.queue = p_queue AND t.active OFFSET 1);  -- <= 1
    END IF;

    IF v_plain THEN
        -- FIFO: priority, time, id across the queue. The job that caused this machine's launch goes
        -- first when it is still waiting.
        IF p_prefer_id IS NOT NULL THEN
            -- Found by id with a plan made for this call (one a machine launch, see the header), then
            -- locked and updated as the picks below are.
            EXECUTE 'SELECT j.ctid FROM jobs j WHERE j.id = $1 AND j.queue = $2 AND j.state = ''available''
                       AND j.scheduled_at <= $3 FOR UPDATE SKIP LOCKED'
               INTO v_ctid USING p_prefer_id, p_queue, v_now;
            RETURN QUERY
            UPDATE jobs SET state = 'executing', attempt = jobs.attempt + 1, attempted_by = p_machine,
                            attempted_at = v_now, heartbeat_at = v_now
             WHERE jobs.ctid = v_ctid
            RETURNING jobs.*;
            GET DIAGNOSTICS v_claimed = ROW_COUNT;
            v_free := v_free - v_claimed;
            IF v_free <= 0 THEN
                RETURN;
            END IF;
        END IF;
        -- The picked rows are locked first, in a statement of their own, and then updated by their
        -- addresses (ctid): a TID scan, which no statistics can turn into a scan of anything else
        -- (by id, 0013, a plan made while `jobs` was empty read a whole index that has the id as a
        -- later column, on each claim: on a one-page index that looked cheaper than ten descents).
        -- Two statements, because a row updated by someone else after the locking statement's
        -- snapshot is locked in its new version, which only a later snapshot sees.
        v_ctids := ARRAY(
            SELECT j.ctid FROM jobs j
             WHERE j.queue = p_queue AND j.state = 'available' AND j.scheduled_at <= v_now
             ORDER BY j.priority, j.scheduled_at, j.id
             LIMIT v_free
             FOR UPDATE SKIP LOCKED);
        RETURN QUERY
        UPDATE jobs SET state = 'executing', attempt = jobs.attempt + 1, attempted_by = p_machine,
                        attempted_at = v_now, heartbeat_at = v_now
         WHERE jobs.ctid = ANY (v_ctids)
        RETURNING jobs.*;
        RETURN;
    END IF;

    IF v_q.fair AND NOT v_capped AND v_q.rate_limit IS NULL AND p_prefer_id IS NULL THEN
        -- Fairness alone (the common case): the same order as the general pick below, in one
        -- statement that reads only the tenants next in turn and writes each served tenant once.
        -- The listed tenants could not fill the claim: list them again (unless this claim just
        -- did) and fill the rest from the new list, as a second claim would.
        LOOP
            RETURN QUERY
            WITH chosen AS (
                -- The i-th tenant in turn gets at most v_free - i + 1 jobs: each tenant before it
                -- is served first at least once. With v_free tenants in turn, no job starting
                -- after the last one's first job can be served (the v_free first jobs go before
                -- it), so a tenant fetches only the jobs whose turn comes by then: one each when
                -- the tenants are level, as in a round.
                SELECT o.tenant_id, o.pass, o.weight,
                       least(v_free - (row_number() OVER w)::integer + 1,
                             CASE WHEN count(*) OVER w_all >= v_free
                                  THEN floor((max(o.pass) OVER w_all - o.pass) * o.weight + 1e-9)::integer + 1
                                  ELSE v_free END) AS fetch
                  FROM (SELECT t.tenant_id, greatest(t.pass, v_q.fair_vtime) AS pass, coalesce(t.weight, 1) AS weight
                          FROM queue_tenants t
                         WHERE t.queue = p_queue AND t.active
                         ORDER BY greatest(t.pass, v_q.fair_vtime), t.tenant_id
                         LIMIT v_free) o
                WINDOW w AS (ORDER BY o.pass, o.tenant_id), w_all AS ()
            ), picked AS (
                -- vstart: the round-robin time of the job's turn (the k-th job of a tenant in this
                -- claim starts at pass + (k - 1) / weight); the last one served is the new clock.
                SELECT c.tenant_id, h.id, c.pass + (h.rn - 1)::float8 / c.weight AS vstart
                  FROM chosen c
                 CROSS JOIN LATERAL (
                     SELECT j.id, j.priority, j.scheduled_at,
                            row_number() OVER (ORDER BY j.priority, j.scheduled_at, j.id) AS rn
                       FROM jobs j
                      WHERE j.queue = p_queue AND j.state = 'available' AND j.tenant_id = c.tenant_id
                        AND j.scheduled_at <= v_now
                      ORDER BY j.priority, j.scheduled_at, j.id
                      LIMIT c.fetch) h
                 ORDER BY vstart, h.priority, h.scheduled_at, h.id
                 LIMIT v_free
            ), locked AS (
                SELECT j.id, p.tenant_id FROM jobs j JOIN picked p ON p.id = j.id
                 WHERE j.state = 'available'
                   FOR UPDATE OF j SKIP LOCKED
            ), claimed AS (
                UPDATE jobs SET state = 'executing', attempt = jobs.attempt + 1, attempted_by = p_machine,
                                attempted_at = v_now, heartbeat_at = v_now
                  FROM locked WHERE jobs.id = locked.id
                RETURNING jobs.*
            ), turns AS (
                UPDATE queue_tenants t SET pass = greatest(t.pass, v_q.fair_vtime) + n.jobs::float8 / coalesce(t.weight, 1)
                  FROM (SELECT l.tenant_id, count(*) AS jobs FROM locked l GROUP BY l.tenant_id) n
                 WHERE t.queue = p_queue AND t.tenant_id = n.tenant_id
            ), clock AS (
                UPDATE queues q SET fair_vtime = m.vtime
                  FROM (SELECT max(p.vstart) AS vtime FROM picked p) m
                 WHERE q.name = p_queue AND m.vtime > v_q.fair_vtime
            )
            SELECT * FROM claimed;
            GET DIAGNOSTICS v_claimed = ROW_COUNT;
            v_free := v_free - v_claimed;
            EXIT WHEN v_free <= 0 OR v_scanned;
            SELECT q.fair_vtime INTO v_q.fair_vtime FROM queues q WHERE q.name = p_queue;
            PERFORM claim_list_tenants(p_queue, v_q.fair_vtime, v_now);
            v_scanned := true;
        END LOOP;
        RETURN;
    END IF;
    -- With a key derived from the job, a tenant's next jobs may be held back by the limit while
    -- later ones (another host) may go: look a little past them, never through the backlog.
    v_lookahead := CASE WHEN v_q.rate_key LIKE '%:%' THEN 20 ELSE 0 END;
    -- The job that caused this machine's launch goes first when it is still waiting and its
    -- tenant's cap and rate window allow it.
    -- (read once, by id, with a plan made for this call; the pick below takes it from here, and
    -- the lock at the end checks it is still available)
    IF p_prefer_id IS NOT NULL THEN
        EXECUTE 'SELECT j.tenant_id, j.priority, j.scheduled_at, j.args FROM jobs j
                  WHERE j.id = $1 AND j.queue = $2 AND j.state = ''available'' AND j.scheduled_at <= $3'
           INTO v_prefer_tenant, v_prefer_priority, v_prefer_scheduled, v_prefer_args
          USING p_prefer_id, p_queue, v_now;
    END IF;

    -- The tenants with due jobs: listing them takes one index probe per tenant, so a claim lists
    -- them only every 50 ms, or when the tenants it knew of could not fill it (a new tenant is
    -- seen within 50 ms however busy the others keep the queue).
    FOR v_round IN 1..2 LOOP
        IF NOT v_scanned AND (v_round = 2 OR v_q.tenants_scanned_at IS NULL
                              OR v_now - v_q.tenants_scanned_at > interval '50 milliseconds') THEN
            PERFORM claim_list_tenants(p_queue, v_q.fair_vtime, v_now);
            v_scanned := true;
        ELSIF v_round = 2 THEN
            EXIT;  -- the known tenants filled the claim, or it just listed them
        END IF;

        WITH running AS (
            -- (in jobs_executing_idx's order, as the count above)
            SELECT e.tenant_id, count(*)::integer AS n
              FROM (SELECT j.tenant_id FROM jobs j WHERE j.queue = p_queue AND j.state = 'executing'
                     ORDER BY j.heartbeat_at) e
             GROUP BY e.tenant_id
        ), tenants AS (
            SELECT t.tenant_id,
                   greatest(t.pass, v_q.fair_vtime) AS pass,
                   coalesce(t.weight, 1) AS weight,
                   least(v_free,
                         coalesce(t.max_running, v_q.tenant_limit, 1000) - coalesce(r.n, 0),
                         CASE WHEN v_q.rate_key = 'tenant'
                              THEN rate_window_room(p_queue, t.tenant_id, v_q.rate_limit, v_q.rate_period_seconds, v_now)
                              ELSE 1000 END)
                       AS room
              FROM queue_tenants t
              LEFT JOIN running r ON r.tenant_id = t.tenant_id
             WHERE t.queue = p_queue AND t.active
        ), chosen AS (
            -- Fair: only the tenants next in turn can be served by this claim. FIFO (caps or a rate
            -- limit without fairness): every eligible tenant's head competes.
            -- The i-th tenant in turn gets at most v_free - i + 1 jobs: each tenant before it is
            -- served first at least once.
            SELECT o.*, CASE WHEN v_q.fair THEN least(o.room, v_free - o.turn + 1) ELSE o.room END AS fetch
              FROM (SELECT t.*, row_number() OVER (ORDER BY t.tenant_id IS NOT DISTINCT FROM v_prefer_tenant DESC,
                                                            t.pass, t.tenant_id)::integer AS turn
                      FROM tenants t WHERE t.room > 0) o
             WHERE NOT v_q.fair OR o.turn <= v_free * (CASE WHEN v_lookahead > 0 THEN 2 ELSE 1 END)
        ), heads AS (
            SELECT c.tenant_id, c.pass, c.weight, c.room, h.id, h.priority, h.scheduled_at,
                   CASE WHEN v_q.rate_key IS NOT NULL THEN job_rate_key(v_q.rate_key, c.tenant_id, h.args) END AS rkey,
                   row_number() OVER (PARTITION BY c.tenant_id
                                      ORDER BY h.id IS NOT DISTINCT FROM p_prefer_id DESC, h.priority, h.scheduled_at, h.id)
                       AS rn
              FROM chosen c
              CROSS JOIN LATERAL (
                  SELECT p_prefer_id AS id, v_prefer_priority AS priority, v_prefer_scheduled AS scheduled_at,
                         v_prefer_args AS args
                   WHERE c.tenant_id = v_prefer_tenant
                  UNION ALL
                  (SELECT j.id, j.priority, j.scheduled_at, j.args FROM jobs j
                    WHERE j.queue = p_queue AND j.state = 'available' AND j.tenant_id = c.tenant_id
                      AND j.scheduled_at <= v_now AND j.id IS DISTINCT FROM p_prefer_id
                    ORDER BY j.priority, j.scheduled_at, j.id
                    LIMIT greatest(c.fetch, 1) + v_lookahead)
              ) h
        ), keyed AS (
            -- Each key lets through only as many jobs as its window has room for, first come first.
            SELECT h.*,
                   row_number() OVER (PARTITION BY h.rkey
                                      ORDER BY h.id IS NOT DISTINCT FROM p_prefer_id DESC,
                                               CASE WHEN v_q.fair THEN h.pass + (h.rn - 1)::float8 / h.weight END,
                                               h.priority, h.scheduled_at, h.id) AS key_rn,
                   CASE WHEN h.rkey IS NOT NULL
                        THEN rate_window_room(p_queue, h.rkey, v_q.rate_limit, v_q.rate_period_seconds, v_now) END
                       AS key_left
              FROM heads h
        ), allowed AS (
            SELECT k.*, row_number() OVER (PARTITION BY k.tenant_id ORDER BY k.rn) AS trn
              FROM keyed k
             WHERE k.rkey IS NULL OR k.key_rn <= k.key_left
        ), picked AS (
            -- vstart: the round-robin time of the job's turn; the last one served is the new clock.
            SELECT a.id, a.pass + (a.trn - 1)::float8 / a.weight AS vstart FROM allowed a
             WHERE a.trn <= a.room
             ORDER BY a.id IS NOT DISTINCT FROM p_prefer_id DESC,
                      CASE WHEN v_q.fair THEN a.pass + (a.trn - 1)::float8 / a.weight END,
                      a.priority, a.scheduled_at, a.id
             LIMIT v_free
        )
        SELECT array_agg(p.id), max(p.vstart) INTO v_ids, v_vtime FROM picked p;
        EXIT WHEN coalesce(cardinality(v_ids), 0) >= v_free;
    END LOOP;

    IF v_ids IS NULL THEN
        RETURN;
    END IF;
    IF v_q.fair AND v_vtime > v_q.fair_vtime THEN
        UPDATE queues SET fair_vtime = v_vtime WHERE name = p_queue;
    END IF;

    RETURN QUERY
    WITH locked AS (
        SELECT j.id FROM jobs j WHERE j.id = ANY (v_ids) AND j.state = 'available' FOR UPDATE SKIP LOCKED
    ), claimed AS (
        UPDATE jobs SET state = 'executing', attempt = jobs.attempt + 1, attempted_by = p_machine,
                        attempted_at = v_now, heartbeat_at = v_now
          FROM locked WHERE jobs.id = locked.id
        RETURNING jobs.*
    ), turns AS (
        -- (every claimed job's tenant has its row: the pick read it from queue_tenants)
        UPDATE queue_tenants t SET pass = greatest(t.pass, v_q.fair_vtime) + n.jobs::float8 / coalesce(t.weight, 1)
          FROM (SELECT c.tenant_id, count(*) AS jobs FROM claimed c GROUP BY c.tenant_id) n
         WHERE v_q.fair AND t.queue = p_queue AND t.tenant_id = n.tenant_id
    ), windows AS (
        INSERT INTO rate_windows AS w (queue, key, starts)
        SELECT p_queue, job_rate_key(v_q.rate_key, c.tenant_id, c.args), array_agg(v_now)
          FROM claimed c WHERE v_q.rate_key IS NOT NULL
         GROUP BY 2
        ON CONFLICT (queue, key) DO UPDATE
           SET starts = ARRAY(SELECT s FROM unnest(w.starts || EXCLUDED.starts) s
                               WHERE s > v_now - make_interval(secs => v_q.rate_period_seconds)
                               ORDER BY s)
    )
    SELECT * FROM claimed;
END
$$;
