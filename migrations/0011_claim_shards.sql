-- Claims of one queue run side by side (issue 15).
--
-- Until now every claim of a queue took the queue's row lock, to count the queue's executing jobs
-- against its fleet-wide limit without a concurrent claim slipping in between; with more than a
-- few machines, most claims waited on that one lock. The limit is now split over up to eight
-- claim shards per queue: shard s of a queue with limit L holds L / n jobs (one more for the first
-- L % n shards, n = least(L, 8)), and each executing job records the shard it counts against. A
-- claim locks shards (skipping the ones other claims hold) until it has room for its jobs, counts
-- each shard's executing jobs under that shard's lock, and stamps its jobs with their shards: the
-- shards never hold more than their share, so the queue never runs more than its limit, and up to
-- eight claims of one queue proceed at once.
--
-- What still needs one order for the whole queue (fair turns between several tenants, tenant caps,
-- rate windows) keeps the queue's row lock, taken before any shard. A change of the rules a claim
-- obeys (pause, limit, fairness, caps, rate limit) locks every shard of the queue: it waits for
-- the claims in flight, and every later claim sees it.
--
-- Lowering a limit can leave a shard over its new share; until no shard is, the queue drains
-- (`claim_drain`): claims take the queue's row lock too and start jobs only while the queue's
-- executing jobs are under its limit, as before shards. (A job counts against shard
-- claim_shard % n, so jobs of shards a smaller limit no longer has still count.)
--
-- Lock order, everywhere: the queue's row, then its shards, then rows of jobs, queue_tenants and
-- rate_windows. A claim that waits for a shard holds none.

ALTER TABLE jobs ADD COLUMN claim_shard smallint;
ALTER TABLE queues ADD COLUMN claim_drain boolean NOT NULL DEFAULT false;
CREATE INDEX jobs_executing_shard_idx ON jobs (queue, claim_shard) WHERE state = 'executing';

CREATE TABLE claim_shards (
    queue text NOT NULL REFERENCES queues (name) ON DELETE CASCADE,
    shard smallint NOT NULL CHECK (shard BETWEEN 0 AND 7),
    PRIMARY KEY (queue, shard)
);
INSERT INTO claim_shards (queue, shard) SELECT q.name, s FROM queues q, generate_series(0, 7) s;

-- The jobs running now count against the shards as claims from now on would have placed them.
UPDATE jobs j SET claim_shard = (j.id % greatest(least(q."limit", 8), 1))::smallint
  FROM queues q WHERE j.queue = q.name AND j.state = 'executing';
UPDATE queues q SET claim_drain = true  -- the first claim clears it if that spread is within the shares
 WHERE EXISTS (SELECT 1 FROM jobs j WHERE j.queue = q.name AND j.state = 'executing');

CREATE FUNCTION queues_add_claim_shards() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO claim_shards (queue, shard) SELECT NEW.name, s FROM generate_series(0, 7) s;
    RETURN NULL;
END
$$;
CREATE TRIGGER queues_add_claim_shards AFTER INSERT ON queues
    FOR EACH ROW EXECUTE FUNCTION queues_add_claim_shards();

CREATE FUNCTION queues_fence_claims() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM claim_shards s WHERE s.queue = NEW.name ORDER BY s.shard FOR UPDATE;
    IF NEW."limit" < OLD."limit" THEN
        NEW.claim_drain := true;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER queues_fence_claims BEFORE UPDATE ON queues
    FOR EACH ROW
    WHEN (OLD.paused IS DISTINCT FROM NEW.paused OR OLD."limit" IS DISTINCT FROM NEW."limit"
          OR OLD.fair IS DISTINCT FROM NEW.fair OR OLD.tenant_limit IS DISTINCT FROM NEW.tenant_limit
          OR OLD.rate_limit IS DISTINCT FROM NEW.rate_limit OR OLD.rate_key IS DISTINCT FROM NEW.rate_key
          OR OLD.rate_period_seconds IS DISTINCT FROM NEW.rate_period_seconds
          -- every admin write stamps updated_at (PUT limits with the tenants' caps in its transaction)
          OR OLD.updated_at IS DISTINCT FROM NEW.updated_at)
    EXECUTE FUNCTION queues_fence_claims();

-- Shard s's share of a queue's limit.
CREATE FUNCTION claim_shard_share(p_shard integer, p_limit integer) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN p_limit <= 0 OR p_shard >= least(p_limit, 8) THEN 0
                ELSE p_limit / least(p_limit, 8) + CASE WHEN p_shard < p_limit % least(p_limit, 8) THEN 1 ELSE 0 END
           END
$$;

-- The jobs one shard may still start: its share of the limit less the executing jobs that count
-- against it (those of shards s, s + n, ... with n = least(limit, 8); a job without a shard, set
-- executing by hand, counts against shard 0).
CREATE FUNCTION claim_shard_room(p_queue text, p_shard smallint, p_limit integer) RETURNS integer
LANGUAGE sql STABLE AS $$
    SELECT claim_shard_share(p_shard, p_limit)
         - (SELECT count(*)::integer FROM jobs j
             WHERE j.queue = p_queue AND j.state = 'executing'
               AND (j.claim_shard = ANY (ARRAY(SELECT generate_series(p_shard::integer, 7, greatest(least(p_limit, 8), 1))))
                    OR (p_shard = 0 AND j.claim_shard IS NULL)))
$$;

-- Whether some shard of a queue holds more executing jobs than its share of `p_limit`.
CREATE FUNCTION claim_shards_over(p_queue text, p_limit integer) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (
        SELECT 1 FROM jobs j
         WHERE j.queue = p_queue AND j.state = 'executing'
         GROUP BY coalesce(j.claim_shard, 0) % greatest(least(p_limit, 8), 1)
        HAVING count(*) > claim_shard_share(coalesce(j.claim_shard, 0) % greatest(least(p_limit, 8), 1), p_limit))
$$;

-- Lock shards of a queue until they have room for `p_want` jobs, and return one shard per job
-- that may start (its length is the claim's room). Shards other claims hold are skipped; when
-- every shard is held, the claim waits for one, holding none, so no two claims wait on each other.
-- The queue's rules are read again once a shard is held (`p_limit` is the caller's earlier read):
-- a change of them holds every shard until it commits, so it is either seen or not yet begun.
-- Nothing may start when the queue is now paused, draining while the caller does not hold its
-- row, or no longer plain (caps or a rate limit) for a caller that took it for plain.
-- A VOLATILE plpgsql function: each statement takes a snapshot after the locks before it.
CREATE FUNCTION claim_take_shards(p_queue text, p_limit integer, p_want integer, p_queue_locked boolean,
                                  p_plain boolean) RETURNS smallint[]
LANGUAGE plpgsql AS $$
DECLARE
    v_limit integer := p_limit;
    v_paused boolean;
    v_drain boolean;
    v_ruled boolean;
    v_seen integer := 0;
    v_n integer;
    v_first integer;
    v_shard smallint;
    v_tried smallint[] := '{}';
    v_slots smallint[] := '{}';
    v_room integer;
BEGIN
    v_n := least(v_limit, 8);
    IF v_n IS NULL OR v_n <= 0 OR p_want <= 0 THEN
        RETURN v_slots;
    END IF;
    v_first := floor(random() * v_n)::integer;  -- claims spread over the shards
    LOOP
        SELECT s.shard INTO v_shard FROM claim_shards s
         WHERE s.queue = p_queue AND s.shard < v_n AND s.shard <> ALL (v_tried)
         ORDER BY (s.shard - v_first + 8) % 8
         LIMIT 1
           FOR UPDATE SKIP LOCKED;
        IF NOT FOUND THEN
            EXIT WHEN cardinality(v_tried) > 0;
            SELECT s.shard INTO v_shard FROM claim_shards s
             WHERE s.queue = p_queue AND s.shard = v_first
               FOR UPDATE;
            EXIT WHEN NOT FOUND;
        END IF;
        IF cardinality(v_tried) = 0 THEN
            SELECT q."limit", q.paused, q.claim_drain,
                   q.tenant_limit IS NOT NULL OR q.rate_limit IS NOT NULL
                   OR EXISTS (SELECT 1 FROM queue_tenants t WHERE t.queue = p_queue AND t.max_running IS NOT NULL)
              INTO v_limit, v_paused, v_drain, v_ruled
              FROM queues q WHERE q.name = p_queue;
            IF v_paused OR v_limit <= 0 OR (v_drain AND NOT p_queue_locked) OR (v_ruled AND p_plain) THEN
                RETURN '{}';
            END IF;
            v_n := least(v_limit, 8);
        END IF;
        v_tried := v_tried || v_shard;
        IF v_shard < v_n THEN
            v_seen := v_seen + 1;
        END IF;
        v_room := least(claim_shard_room(p_queue, v_shard, v_limit), p_want - cardinality(v_slots));
        IF v_room > 0 THEN
            v_slots := v_slots || array_fill(v_shard, ARRAY[v_room]);
        END IF;
        EXIT WHEN cardinality(v_slots) >= p_want OR v_seen >= v_n;
    END LOOP;
    RETURN v_slots;
END
$$;

-- Claim up to `max_jobs` available jobs of one queue for one machine, honouring the queue's
-- fleet-wide limit and pause (through its claim shards, above), and (when set) fairness between
-- tenants, their caps and the rate limit (under the queue's row lock). This function is plpgsql
-- (VOLATILE) so the counts below take a fresh snapshot after those locks, which a single SQL
-- statement could not (its snapshot predates the lock wait).
--
-- Fair order: each tenant's jobs by priority, time, id; between tenants, the job with the lowest
-- virtual start `pass + k / weight` (k-th job of this claim for the tenant) goes first, which is
-- round-robin across tenants with due jobs (weighted: a tenant of weight 2 gets two turns).
CREATE OR REPLACE FUNCTION claim_jobs(p_queue text, p_machine text, p_max_jobs integer, p_prefer_id bigint)
RETURNS SETOF jobs LANGUAGE plpgsql AS $$
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
    v_scanned boolean := false;
    v_round integer;
    v_plain boolean;
    v_slots smallint[];
    v_used integer := 0;
    v_want integer := p_max_jobs;
BEGIN
    -- A claim need not wait for its WAL flush (about one fsync off every pickup). If Postgres
    -- crashes before the flush, the claim is forgotten and the job is simply available again;
    -- the machine that thought it held it is fenced out (attempt and holder no longer match).
    PERFORM set_config('synchronous_commit', 'off', true);
    SELECT * INTO v_q FROM queues WHERE name = p_queue;
    IF NOT FOUND OR v_q.paused THEN
        RETURN;
    END IF;
    v_capped := v_q.tenant_limit IS NOT NULL
        OR EXISTS (SELECT 1 FROM queue_tenants t WHERE t.queue = p_queue AND t.max_running IS NOT NULL);
    v_plain := NOT (v_q.fair OR v_capped OR v_q.rate_limit IS NOT NULL);
    IF v_q.fair AND NOT v_capped AND v_q.rate_limit IS NULL THEN
        -- Fairness alone, and one tenant with due jobs: FIFO is that tenant's fair order. One claim
        -- at a time lists the tenants (every 50 ms); the others go on with the last list.
        IF v_q.tenants_scanned_at IS NULL OR clock_timestamp() - v_q.tenants_scanned_at > interval '50 milliseconds' THEN
            PERFORM 1 FROM queues q
             WHERE q.name = p_queue
               AND (q.tenants_scanned_at IS NULL OR clock_timestamp() - q.tenants_scanned_at > interval '50 milliseconds')
               FOR UPDATE SKIP LOCKED;
            IF FOUND THEN
                PERFORM claim_list_tenants(p_queue, v_q.fair_vtime, clock_timestamp());
                v_scanned := true;
            END IF;
        END IF;
        v_plain := NOT EXISTS (SELECT FROM queue_tenants t WHERE t.queue = p_queue AND t.active OFFSET 1);  -- <= 1
    END IF;
    IF NOT v_plain OR v_q.claim_drain THEN
        -- One order for the whole queue: its row lock, then the shards.
        SELECT * INTO v_q FROM queues WHERE name = p_queue FOR UPDATE;
        IF v_q.paused THEN
            RETURN;
        END IF;
        IF v_q.claim_drain THEN
            IF claim_shards_over(p_queue, v_q."limit") THEN
                SELECT least(v_want, v_q."limit" - count(*)) INTO v_want
                  FROM jobs WHERE queue = p_queue AND state = 'executing';
            ELSE
                UPDATE queues SET claim_drain = false WHERE name = p_queue;
            END IF;
        END IF;
        v_capped := v_q.tenant_limit IS NOT NULL
            OR EXISTS (SELECT 1 FROM queue_tenants t WHERE t.queue = p_queue AND t.max_running IS NOT NULL);
        IF v_q.fair AND NOT v_capped AND v_q.rate_limit IS NULL AND NOT v_scanned
           AND (v_q.tenants_scanned_at IS NULL OR clock_timestamp() - v_q.tenants_scanned_at > interval '50 milliseconds') THEN
            PERFORM claim_list_tenants(p_queue, v_q.fair_vtime, clock_timestamp());
            v_scanned := true;
        END IF;
    END IF;
    v_slots := claim_take_shards(p_queue, v_q."limit", v_want, NOT v_plain OR v_q.claim_drain, v_plain);
    v_free := cardinality(v_slots);
    IF v_free <= 0 THEN
        RETURN;
    END IF;

    -- Taken after the locks: start times of one queue's rate-limited claims only move forward, so
    -- the rate windows (and attempted_at, which the windows record) agree with every other claim's.
    v_now := clock_timestamp();
    IF v_plain THEN
        -- FIFO: priority, time, id across the queue. The job that caused this machine's launch goes
        -- first when it is still waiting.
        IF p_prefer_id IS NOT NULL THEN
            RETURN QUERY
            UPDATE jobs SET state = 'executing', attempt = jobs.attempt + 1, attempted_by = p_machine,
                            attempted_at = now(), heartbeat_at = now(), claim_shard = v_slots[1]
             WHERE jobs.id = (SELECT j.id FROM jobs j
                               WHERE j.id = p_prefer_id AND j.queue = p_queue AND j.state = 'available'
                                 AND j.scheduled_at <= now()
                               FOR UPDATE SKIP LOCKED)
            RETURNING jobs.*;
            GET DIAGNOSTICS v_claimed = ROW_COUNT;
            v_free := v_free - v_claimed;
            v_used := v_used + v_claimed;
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
        ), numbered AS (
            SELECT p.id, row_number() OVER (ORDER BY p.id) AS rn FROM picked p
        )
        UPDATE jobs SET state = 'executing', attempt = jobs.attempt + 1, attempted_by = p_machine,
                        attempted_at = now(), heartbeat_at = now(), claim_shard = v_slots[v_used + numbered.rn]
          FROM numbered WHERE jobs.id = numbered.id
        RETURNING jobs.*;
        RETURN;
    END IF;

    -- The statements below are planned once per connection, not per call: their plan does not
    -- depend on the parameters, and planning the fair pick costs more than running it.
    PERFORM set_config('plan_cache_mode', 'force_generic_plan', true);

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
                        AND j.scheduled_at <= now()
                      ORDER BY j.priority, j.scheduled_at, j.id
                      LIMIT c.fetch) h
                 ORDER BY vstart, h.priority, h.scheduled_at, h.id
                 LIMIT v_free
            ), locked AS (
                SELECT j.id, p.tenant_id FROM jobs j JOIN picked p ON p.id = j.id
                 WHERE j.state = 'available'
                   FOR UPDATE OF j SKIP LOCKED
            ), numbered AS (
                SELECT l.id, row_number() OVER (ORDER BY l.id) AS rn FROM locked l
            ), claimed AS (
                UPDATE jobs SET state = 'executing', attempt = jobs.attempt + 1, attempted_by = p_machine,
                                attempted_at = v_now, heartbeat_at = v_now, claim_shard = v_slots[v_used + numbered.rn]
                  FROM numbered WHERE jobs.id = numbered.id
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
            v_used := v_used + v_claimed;
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
    IF p_prefer_id IS NOT NULL THEN
        SELECT j.tenant_id INTO v_prefer_tenant FROM jobs j
         WHERE j.id = p_prefer_id AND j.queue = p_queue AND j.state = 'available' AND j.scheduled_at <= now();
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
            SELECT j.tenant_id, count(*)::integer AS n FROM jobs j
             WHERE j.queue = p_queue AND j.state = 'executing'
             GROUP BY j.tenant_id
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
                  SELECT j.id, j.priority, j.scheduled_at, j.args FROM jobs j
                   WHERE j.id = p_prefer_id AND c.tenant_id = v_prefer_tenant AND j.state = 'available'
                  UNION ALL
                  (SELECT j.id, j.priority, j.scheduled_at, j.args FROM jobs j
                    WHERE j.queue = p_queue AND j.state = 'available' AND j.tenant_id = c.tenant_id
                      AND j.scheduled_at <= now() AND j.id IS DISTINCT FROM p_prefer_id
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
    ), numbered AS (
        SELECT l.id, row_number() OVER (ORDER BY l.id) AS rn FROM locked l
    ), claimed AS (
        UPDATE jobs SET state = 'executing', attempt = jobs.attempt + 1, attempted_by = p_machine,
                        attempted_at = v_now, heartbeat_at = v_now, claim_shard = v_slots[numbered.rn]
          FROM numbered WHERE jobs.id = numbered.id
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
