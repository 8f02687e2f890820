-- A claim's reading no longer grows with the square of its size (issue 15; a third review of
-- 0018). With a key derived from the job (per host or per domain) and fairness on, 0018 read every
-- tenant in turn for its room + 20 jobs, in the check that passes held-back tenants over and in
-- the pick; the room is the whole claim when no cap applies, so a claim of 100 over 300 tenants
-- held back read 28,422 pages, and 25,522 over free ones (0017: 10,638).
-- Now a tenant is read for its share + 20 jobs: the most it can take at its place in turn,
-- v_free - place + 1 (each tenant before it is served first at least once), and, with v_free
-- tenants in turn, only the jobs whose turn comes by the v_free-th tenant's first: one each when
-- the tenants are level (the fair path's bound since 0007). The check that passes tenants over
-- reads the share at the tenant's place; the pick reads the share at its turn among the tenants
-- kept, and never less than the check read (a tenant kept in turn for a job the pick does not
-- read took a place for nothing and left a claim short: 0018's second review). 5,593 and 5,668
-- pages for those claims (tests/shared/db/test_claim_plans_by_claim_size.py).
-- What that gives up: a tenant whose first free job lies past its share + 20 and within its
-- room + 20 is passed over for that claim where 0018 served it (the lookahead is "a little past its
-- held-back jobs", and a share is what a tenant can take there). Level with v_free tenants or
-- more, a tenant's share is 1, so it is read for 21 jobs, as every version read it for a claim of
-- one (MACHINE_CONCURRENCY's default): its later free job waits until the jobs before it can go
-- (a tenant passed over keeps its turn but falls no further behind than the queue's clock, so its
-- share does not grow while the others are served; 0019's second review).
-- (tests/shared/db/test_claims_pass_over_rate_blocked_tenants.py; the review compared 0018 and
-- 0019 on identical random queues: 0019 claimed fewer jobs in 6 of 80, each by this.)
-- With passes spread over the claim's width the shares are larger and a claim's reading is
-- about half of 0018's square: 10,382 pages for a claim of 100 over 250 tenants whose passes are
-- 0, 1, 2, ... (0018: 28,583); tenants in turn stay within about a round of each other.
-- The launch's tenant, first whatever its pass, is left out of the pass bound's v_free tenants:
-- with it far ahead, every other tenant was read for v_free - place + 1 again (0019's second
-- review: 9,286 pages for a claim of 100; tests/shared/db/test_claim_plans_launch_claim.py).
-- And the tenants read past the claim's size (twice it, with such a key) stand in for those in
-- turn that yield nothing: at the same turn (a tie of passes, as between new tenants), the
-- tenants in turn go first, as in the fair path, which reads no others. 0018 let a job's priority
-- decide such a tie, so with windows that never fill, the keyed path claimed other jobs than the
-- fair path (tests/shared/db/test_fair_claims.py, the equivalence tests).
-- The fair path's bound (since 0007) is clamped to the claim's size before its integer cast, as
-- the new ones are: a pass gap of 3e7 at weight 100 raised `integer out of range` and failed
-- every claim of the queue (tests/shared/db/test_claims_pass_bound_numbers.py; from 0019's review).
-- Everything else is 0018's (see its header).

-- As in 0018, with the above in the general path.
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
    v_skipped bigint[] := '{}';  -- picked by the general path but locked by someone else: pick again without them
    v_pass integer := 0;
    v_prefer_id bigint := p_prefer_id;  -- the launch's job, offered first in the general path's first pass only
    v_locked bigint[];
    v_vstarts double precision[];
    v_tenants text[];
    v_idle text[];  -- tenants in turn that yielded no job: every due one is held elsewhere (or none is due)
    v_passed text[] := '{}';  -- such tenants, left out of this claim's later passes
    v_held text[];  -- general path: tenants none of whose picks in a pass could be locked
    v_held_once text[] := '{}';  -- ... in an earlier pass of this claim
    v_lost boolean;  -- general path, fair: a tenant given no pick had a job that lost its window to another's
    v_repasses integer := 0;  -- passes taken for that (at most 2: each reads a pick's worth of tenants)
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
            -- Pick and lock in one statement, then claim what it locked by address (ctid) in the
            -- next, as FIFO does: no statement looks a job up by id (a plan made on an empty table
            -- read a whole index by id, 781 pages per claim under a backlog), and a row updated
            -- after the first statement's snapshot is locked in its new version, which the
            -- second statement sees.
            WITH chosen AS (
                -- The i-th tenant in turn gets at most v_free - i + 1 jobs: each tenant before it
                -- is served first at least once. With v_free tenants in turn, no job starting
                -- after the last one's first job can be served (the v_free first jobs go before
                -- it), so a tenant fetches only the jobs whose turn comes by then: one each when
                -- the tenants are level, as in a round.
                SELECT o.tenant_id, o.pass, o.weight,
                       least(v_free - (row_number() OVER w)::integer + 1,
                             CASE WHEN count(*) OVER w_all >= v_free
                                  THEN floor(least((max(o.pass) OVER w_all - o.pass) * o.weight, v_free) + 1e-9)::integer + 1  -- (clamped: 0019)
                                  ELSE v_free END) AS fetch
                  FROM (SELECT t.tenant_id, greatest(t.pass, v_q.fair_vtime) AS pass, coalesce(t.weight, 1) AS weight
                          FROM queue_tenants t
                         WHERE t.queue = p_queue AND t.active AND t.tenant_id <> ALL (v_passed)
                         ORDER BY greatest(t.pass, v_q.fair_vtime), t.tenant_id
                         LIMIT v_free) o
                WINDOW w AS (ORDER BY o.pass, o.tenant_id), w_all AS ()
            ), fetched AS (
                -- vstart: the round-robin time of the job's turn (the k-th job of a tenant in this
                -- claim starts at pass + (k - 1) / weight); the last one served is the new clock.
                SELECT c.tenant_id, h.ctid, h.priority, h.scheduled_at, h.id,
                       c.pass + (h.rn - 1)::float8 / c.weight AS vstart
                  FROM chosen c
                 CROSS JOIN LATERAL (
                     -- A job another transaction has locked (a cancel or an edit in flight) is
                     -- passed over here, so the tenant's next one takes its place; skipped only
                     -- after the pick, it left the claim short (empty for a claim of one). A
                     -- tenant's rows past the claim's end stay locked until it commits (only
                     -- when tenants are uneven: level tenants fetch one each).
                     SELECT f.ctid, f.priority, f.scheduled_at, f.id,
                            row_number() OVER (ORDER BY f.priority, f.scheduled_at, f.id) AS rn
                       FROM (SELECT j.ctid, j.id, j.priority, j.scheduled_at
                               FROM jobs j
                              WHERE j.queue = p_queue AND j.state = 'available' AND j.tenant_id = c.tenant_id
                                AND j.scheduled_at <= v_now
                              ORDER BY j.priority, j.scheduled_at, j.id
                              LIMIT c.fetch
                                FOR UPDATE OF j SKIP LOCKED) f) h
            ), picked AS (
                SELECT f.ctid, f.vstart FROM fetched f
                 ORDER BY f.vstart, f.priority, f.scheduled_at, f.id
                 LIMIT v_free
            )
            SELECT (SELECT array_agg(p.ctid) FROM picked p), (SELECT max(p.vstart) FROM picked p),
                   (SELECT array_agg(c.tenant_id) FROM chosen c
                     WHERE NOT EXISTS (SELECT FROM fetched f WHERE f.tenant_id = c.tenant_id))
              INTO v_ctids, v_vtime, v_idle;
            v_claimed := 0;
            IF v_ctids IS NOT NULL THEN
                RETURN QUERY
                WITH claimed AS (
                    UPDATE jobs SET state = 'executing', attempt = jobs.attempt + 1, attempted_by = p_machine,
                                    attempted_at = v_now, heartbeat_at = v_now
                     WHERE jobs.ctid = ANY (v_ctids)  -- (a TID scan only: locked by this claim, so still available)
                    RETURNING jobs.*
                ), turns AS (
                    UPDATE queue_tenants t SET pass = greatest(t.pass, v_q.fair_vtime) + n.jobs::float8 / coalesce(t.weight, 1)
                      FROM (SELECT c.tenant_id, count(*) AS jobs FROM claimed c GROUP BY c.tenant_id) n
                     WHERE t.queue = p_queue AND t.tenant_id = n.tenant_id
                ), clock AS (
                    -- (every picked row is locked, so every one is claimed)
                    UPDATE queues q SET fair_vtime = v_vtime WHERE q.name = p_queue AND v_vtime > v_q.fair_vtime
                )
                SELECT * FROM claimed;
                GET DIAGNOSTICS v_claimed = ROW_COUNT;
            END IF;
            v_free := v_free - v_claimed;
            v_pass := v_pass + 1;
            -- Short: a tenant in turn that yielded nothing (its due jobs are held elsewhere, a
            -- cancel in flight, or the listing is stale) gives its turn to the next tenant, for
            -- this claim only; and the tenants are listed again once. Each pass passes over at
            -- least one tenant, and reads only the next tenants' heads: at most 32 passes.
            EXIT WHEN v_free <= 0 OR v_pass >= 32 OR (v_scanned AND v_idle IS NULL);
            v_passed := v_passed || coalesce(v_idle, '{}');
            SELECT q.fair_vtime INTO v_q.fair_vtime FROM queues q WHERE q.name = p_queue;
            IF NOT v_scanned THEN
                PERFORM claim_list_tenants(p_queue, v_q.fair_vtime, v_now);
                v_scanned := true;
            END IF;
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
        -- Its tenant may be new since the last listing (the launch is for its first job): list
        -- the tenants now, or the pick below, which reads only listed tenants, passes it over.
        IF v_prefer_tenant IS NOT NULL AND NOT v_scanned AND NOT EXISTS (
               SELECT FROM queue_tenants t WHERE t.queue = p_queue AND t.tenant_id = v_prefer_tenant AND t.active) THEN
            PERFORM claim_list_tenants(p_queue, v_q.fair_vtime, v_now);
            v_scanned := true;
        END IF;
    END IF;

    <<claiming>>
    LOOP
        v_pass := v_pass + 1;
        v_ids := NULL;

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
                                  THEN v_q.rate_limit - (SELECT count(*)::integer FROM rate_windows w, unnest(w.starts) s
                                                       WHERE w.queue = p_queue AND w.key = t.tenant_id
                                                         AND s > v_now - make_interval(secs => v_q.rate_period_seconds))  -- rate_window_room, written out (see `chosen`)
                                  ELSE 1000 END)
                           AS room
                  FROM queue_tenants t
                  LEFT JOIN running r ON r.tenant_id = t.tenant_id
                 WHERE t.queue = p_queue AND t.active AND t.tenant_id <> ALL (v_passed)
            ), listed AS (
                SELECT t.*, row_number() OVER (ORDER BY t.tenant_id IS NOT DISTINCT FROM v_prefer_tenant DESC,
                                                        t.pass, t.tenant_id) AS place
                  FROM tenants t WHERE t.room > 0
                 ORDER BY place
                 -- (with a key derived from the job, at most 32 tenants are passed over per pass: bounded work)
                 LIMIT CASE WHEN v_q.fair AND v_lookahead > 0 THEN v_free * 2 + 32 END
            ), in_turn AS (
                -- (sorted once, behind a fence (OFFSET 0), so the filter below reads the tenants in
                -- this order and stops when the claim has enough of them)
                -- share: the most jobs a tenant can take at its place, read by the check below (+ 20):
                -- v_free - place + 1, as each tenant before it is served first at least once; and,
                -- with v_free tenants in turn, only the jobs whose turn comes by the v_free-th
                -- tenant's first (as in the fair path above: one each when the tenants are level).
                -- (the launch's tenant, first whatever its pass, is not one of those v_free: a pass far
                -- ahead would make every other tenant's bound the whole claim)
                SELECT l.*,
                       greatest(least(l.room, v_free - l.place::integer + 1,
                                      CASE WHEN count(*) OVER () >= v_free
                                           THEN floor(greatest(least((max(l.pass) FILTER (WHERE l.place <= v_free + (v_prefer_tenant IS NOT NULL)::integer
                                                                                          AND l.tenant_id IS DISTINCT FROM v_prefer_tenant) OVER ()
                                                                      - l.pass) * l.weight, v_free), -1) + 1e-9)::integer + 1
                                           ELSE v_free END), 1) AS share
                  FROM listed l
                 ORDER BY l.place
                OFFSET 0
            ), chosen AS (
                -- Fair: only the tenants next in turn can be served by this claim. FIFO (caps or a rate
                -- limit without fairness): every eligible tenant's head competes.
                -- With a key derived from the job (per host, per domain), a tenant none of whose next
                -- jobs can go, their windows being full, gives its turn to the tenants after it, for
                -- this claim, and keeps it for when a window opens (0018).
                -- fetch: a tenant's share at its turn among the tenants kept (no later than its place),
                -- reckoned as `share` is.
                SELECT o.*,
                       CASE WHEN v_q.fair
                            THEN least(o.room, v_free - o.turn + 1,
                                       CASE WHEN count(*) OVER () >= v_free
                                            THEN floor(greatest(least((max(o.pass) FILTER (WHERE o.turn <= v_free + (v_prefer_tenant IS NOT NULL)::integer
                                                                                           AND o.tenant_id IS DISTINCT FROM v_prefer_tenant) OVER ()
                                                                       - o.pass) * o.weight, v_free), -1) + 1e-9)::integer + 1
                                            ELSE v_free END)
                            ELSE o.room END AS fetch
                  FROM (SELECT s.*, row_number() OVER (ORDER BY s.place)::integer AS turn
                          FROM (SELECT i.* FROM in_turn i
                                 WHERE NOT v_q.fair OR v_lookahead = 0 OR i.tenant_id IS NOT DISTINCT FROM v_prefer_tenant
                                    OR EXISTS (SELECT FROM (SELECT j.args FROM jobs j
                                                             WHERE j.queue = p_queue AND j.state = 'available'
                                                               AND j.tenant_id = i.tenant_id AND j.scheduled_at <= v_now
                                                               AND j.id <> ALL (v_skipped)
                                                             ORDER BY j.priority, j.scheduled_at, j.id
                                                             -- (its share at its place + 20; `heads`
                                                             -- reads at least as far)
                                                             LIMIT i.share + v_lookahead) h
                                                 LEFT JOIN rate_windows w
                                                        ON w.queue = p_queue AND w.key = job_rate_key(v_q.rate_key, i.tenant_id, h.args)
                                                -- rate_window_room(...) > 0, written out: a function with a
                                                -- subquery is not inlined, and a call per job or tenant
                                                -- cost more than the rest of the pick
                                                WHERE w.starts IS NULL
                                                   OR (SELECT count(*) FROM unnest(w.starts) s
                                                        WHERE s > v_now - make_interval(secs => v_q.rate_period_seconds)) < v_q.rate_limit)
                                 ORDER BY i.place
                                 LIMIT CASE WHEN v_q.fair THEN v_free * (CASE WHEN v_lookahead > 0 THEN 2 ELSE 1 END) END) s) o
            ), heads AS (
                SELECT c.tenant_id, c.pass, c.weight, c.room, c.turn, h.id, h.priority, h.scheduled_at,
                       CASE WHEN v_q.rate_key IS NOT NULL THEN job_rate_key(v_q.rate_key, c.tenant_id, h.args) END AS rkey,
                       row_number() OVER (PARTITION BY c.tenant_id
                                          ORDER BY h.id IS NOT DISTINCT FROM v_prefer_id DESC, h.priority, h.scheduled_at, h.id)
                           AS rn
                  FROM chosen c
                  CROSS JOIN LATERAL (
                      SELECT v_prefer_id AS id, v_prefer_priority AS priority, v_prefer_scheduled AS scheduled_at,
                             v_prefer_args AS args
                       WHERE c.tenant_id = v_prefer_tenant
                      UNION ALL
                      (SELECT j.id, j.priority, j.scheduled_at, j.args FROM jobs j
                        WHERE j.queue = p_queue AND j.state = 'available' AND j.tenant_id = c.tenant_id
                          AND j.scheduled_at <= v_now AND j.id IS DISTINCT FROM v_prefer_id
                          AND j.id <> ALL (v_skipped)
                        ORDER BY j.priority, j.scheduled_at, j.id
                        -- (its share at its turn + 20, and never fewer rows than the check in
                        -- `chosen` read: a tenant kept in turn for a job the pick does not read
                        -- takes a place for nothing, 0018's second review)
                        LIMIT greatest(c.fetch, c.share) + v_lookahead)
                  ) h
            ), keyed AS (
                -- Each key lets through only as many jobs as its window has room for, first come first.
                SELECT h.*,
                       row_number() OVER (PARTITION BY h.rkey
                                          ORDER BY h.id IS NOT DISTINCT FROM v_prefer_id DESC,
                                                   CASE WHEN v_q.fair THEN h.pass + (h.rn - 1)::float8 / h.weight END,
                                                   CASE WHEN v_q.fair THEN h.turn > v_free END,  -- (see `picked`)
                                                   h.priority, h.scheduled_at, h.id) AS key_rn,
                       CASE WHEN h.rkey IS NOT NULL
                            THEN v_q.rate_limit - (SELECT count(*)::integer FROM rate_windows w, unnest(w.starts) s
                                                       WHERE w.queue = p_queue AND w.key = h.rkey
                                                         AND s > v_now - make_interval(secs => v_q.rate_period_seconds)) END
                           AS key_left
                  FROM heads h
            ), allowed AS (
                SELECT k.*, row_number() OVER (PARTITION BY k.tenant_id ORDER BY k.rn) AS trn
                  FROM keyed k
                 WHERE k.rkey IS NULL OR k.key_rn <= k.key_left
            ), picked AS (
                -- vstart: the round-robin time of the job's turn; the last one served is the new clock.
                SELECT a.id, a.tenant_id, a.pass + (a.trn - 1)::float8 / a.weight AS vstart FROM allowed a
                 WHERE a.trn <= a.room
                 ORDER BY a.id IS NOT DISTINCT FROM v_prefer_id DESC,
                          CASE WHEN v_q.fair THEN a.pass + (a.trn - 1)::float8 / a.weight END,
                          -- the tenants read past the claim's size (with a key from the job) stand
                          -- in for those in turn that yield nothing: at the same turn, those in
                          -- turn go first, as in the fair path above, which reads no others
                          CASE WHEN v_q.fair THEN a.turn > v_free END,
                          a.priority, a.scheduled_at, a.id
                 LIMIT v_free
            )
            SELECT array_agg(p.id), array_agg(p.vstart), array_agg(p.tenant_id),
                   (SELECT coalesce(bool_or(v_q.fair AND k.key_left > 0 AND k.key_rn > k.key_left
                                            AND NOT EXISTS (SELECT FROM picked p2 WHERE p2.tenant_id = k.tenant_id)), false)
                      FROM keyed k)
              INTO v_ids, v_vstarts, v_tenants, v_lost
              FROM picked p;
            EXIT WHEN coalesce(cardinality(v_ids), 0) >= v_free;
        END LOOP;

        IF v_ids IS NULL THEN
            RETURN;
        END IF;
        -- Locked by id with a plan made for this call (EXECUTE): a kept plan, made on an empty
        -- table, read a whole index that has the id as a later column (598 pages per claim under
        -- a backlog); then claimed by address (ctid), as FIFO does (see the fair path above).
        -- (the queue and due time are checked after the lock, as filters: in the lock's own
        -- condition they let a plan walk the queue's claim index instead of finding ids)
        EXECUTE 'SELECT array_agg(l.ctid) FILTER (WHERE l.queue = $2 AND l.scheduled_at <= $3),
                        array_agg(l.id) FILTER (WHERE l.queue = $2 AND l.scheduled_at <= $3)
                   FROM (SELECT j.ctid, j.id, j.queue, j.scheduled_at FROM jobs j
                          WHERE j.id = ANY ($1) AND j.state = ''available'' FOR UPDATE SKIP LOCKED) l'
           INTO v_ctids, v_locked USING v_ids, p_queue, v_now;
        v_claimed := 0;
        IF v_ctids IS NOT NULL THEN
            RETURN QUERY
            WITH claimed AS (
                UPDATE jobs SET state = 'executing', attempt = jobs.attempt + 1, attempted_by = p_machine,
                                attempted_at = v_now, heartbeat_at = v_now
                 WHERE jobs.ctid = ANY (v_ctids)  -- (a TID scan only: locked by this claim, so still available)
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
            ), clock AS (
                -- the queue's clock moves to the last turn claimed, not to a pick held elsewhere
                UPDATE queues q SET fair_vtime = m.vtime
                  FROM (SELECT max(u.vstart) AS vtime FROM unnest(v_ids, v_vstarts) AS u(id, vstart)
                         WHERE u.id = ANY (v_locked)) m
                 WHERE v_q.fair AND q.name = p_queue AND m.vtime > v_q.fair_vtime
            )
            SELECT * FROM claimed;
            GET DIAGNOSTICS v_claimed = ROW_COUNT;
        END IF;
        v_free := v_free - v_claimed;
        -- Short because someone else held some of the picked rows: pick again without them (they
        -- are still available to this transaction's eyes; the ones it claimed are executing). Each
        -- pass sees what the last one claimed (running counts, rate windows, turns) and leaves out
        -- the rows it could not lock; at most 16 passes, so a claim's work stays bounded.
        -- (short with every pick claimed: done, unless a tenant in turn only lost a window to
        -- another tenant's pick of this pass; the next pass sees that window full and passes over
        -- it; twice at most, as tenants sharing hosts can keep losing)
        EXIT claiming WHEN v_free <= 0 OR v_pass >= 16
                           OR (v_claimed >= cardinality(v_ids) AND (NOT v_lost OR v_repasses >= 2));
        IF v_claimed >= cardinality(v_ids) THEN
            v_repasses := v_repasses + 1;
        END IF;
        v_skipped := v_skipped || ARRAY(SELECT u.id FROM unnest(v_ids) AS u(id) WHERE u.id <> ALL (coalesce(v_locked, '{}')));
        -- A tenant none of whose picks could be locked gives its turn to the next, for this claim
        -- (in turn with nothing to give, it kept the next tenants out): at once when it has no
        -- other due job, else when that happens to it a second time (its next jobs are held
        -- too: a batch being cancelled). (the probe is ordered as jobs_tenant_claim_idx, so only
        -- that index can serve it)
        v_held := ARRAY(
            SELECT u.tenant_id FROM unnest(v_ids, v_tenants) AS u(id, tenant_id)
             GROUP BY u.tenant_id
            HAVING bool_and(u.id <> ALL (coalesce(v_locked, '{}'))));
        v_passed := v_passed || ARRAY(
            SELECT h.tenant_id FROM unnest(v_held) AS h(tenant_id)
             WHERE h.tenant_id = ANY (v_held_once)
                OR NOT EXISTS (SELECT 1 FROM jobs j
                                WHERE j.queue = p_queue AND j.state = 'available' AND j.tenant_id = h.tenant_id
                                  AND j.scheduled_at <= v_now AND j.id <> ALL (v_skipped)
                                ORDER BY j.tenant_id, j.priority, j.scheduled_at, j.id
                                LIMIT 1));
        v_held_once := v_held_once || v_held;
        -- The launch's job was claimed or is held elsewhere: no longer first, nor its tenant.
        v_prefer_id := NULL;
        v_prefer_tenant := NULL;
        SELECT q.fair_vtime INTO v_q.fair_vtime FROM queues q WHERE q.name = p_queue;
    END LOOP claiming;
END
$$;
