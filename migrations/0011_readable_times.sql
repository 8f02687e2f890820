-- A job's time must be one the service can read back (issue 15's review). Postgres keeps years up
-- to 294276 and BC dates, psycopg and Python read years 1 to 9999 only: a job scheduled at
-- 9999-12-31T23:59:59-01:00 (year 10000 in UTC) was stored, and from then on every read of the
-- tenant's jobs failed, the claim of its queue included. The API refuses such times; this holds
-- for every path that writes one (options, schedules, retry backoff, snoozes, raw SQL).
--
-- Rows that already hold such a time (the databases this exists for) are moved to the nearest
-- readable one first, or the validation below would abort the migration and the release with it.
UPDATE jobs SET scheduled_at = CASE WHEN scheduled_at < '0001-01-01 00:00:00+00'
                                    THEN timestamptz '0001-01-01 00:00:00+00'
                                    ELSE timestamptz '9999-12-31 23:59:59.999999+00' END
 WHERE scheduled_at < '0001-01-01 00:00:00+00' OR scheduled_at >= '10000-01-01 00:00:00+00';
ALTER TABLE jobs ADD CONSTRAINT jobs_scheduled_at_readable
    CHECK (scheduled_at >= '0001-01-01 00:00:00+00' AND scheduled_at < '10000-01-01 00:00:00+00') NOT VALID;
ALTER TABLE jobs VALIDATE CONSTRAINT jobs_scheduled_at_readable;
