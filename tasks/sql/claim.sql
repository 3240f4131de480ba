-- The claim (tasks.queue): one statement that works out what the reader may claim from their
-- memberships, takes the best slot they may take, and says why where it took none.
--
-- It is sent right after the reader's claim lock, in the same message, so its snapshot is taken
-- once the lock is granted: the open-read count and the same-task probe see the reader's other
-- claims. Every placeholder is named and cast (the statement is prepared: pgsql.prepared); the
-- {braced} names are filled in once, when the text is loaded: the reader-eligibility rule's CTEs
-- ``membership`` and ``eligible`` (tasks/sql/eligibility.sql, which tasks.routing.eligibility runs
-- too, so the claim and the check path cannot disagree), state names from tasks.states and the
-- claim's audit event (audit.trail.embedded_event, after ``claimed``).
--
-- Flags, as tasks.queue sets them:
--   resume              hand back the oldest read the reader still holds there instead (held)
--   offer_checks        where a calibration or gold check is due, claim nothing (wants_check):
--                       tasks.gold hands those out; gold_draw is the draw in [0, 1) the rates meet
--   take_lapsed         take a slot whose lease ran out (else claim nothing)
--   skip_busy           pass over a task another claim is taking this instant
--   audit_head_required claim only where the audit event goes in with the claim (audit_ready)
WITH {eligibility}, held AS (
    -- The oldest read still leased to the reader where they may claim (the partial index
    -- read_open_per_reader answers it: a handful of rows per reader).
    SELECT h.id, e.sees_model
    FROM tasks_read h JOIN eligible e ON e.project_id = h.project_id
    WHERE %(resume)s::boolean AND h.reader_id = %(reader)s::bigint AND h.state = '{claimed}'
      AND h.lease_expires_at > %(now)s::timestamptz
    ORDER BY h.claimed_at, h.id
    LIMIT 1
), decision AS MATERIALIZED (
    -- Evaluated once, before any slot is locked.
    SELECT (SELECT id FROM held) AS held_read, coalesce((SELECT sees_model FROM held), false) AS held_sees_model,
           %(offer_checks)s::boolean AND EXISTS (
               SELECT 1 FROM eligible
               WHERE open_reads < max_open_reads AND (needs_calibration OR gold_rate > %(gold_draw)s::float8)
           ) AS wants_check,
           NOT %(audit_head_required)s::boolean OR {audit_head_exists} AS audit_ready
), claimable AS (
    SELECT e.*
    FROM eligible e, decision d
    WHERE NOT e.needs_calibration AND e.open_reads < e.max_open_reads
      AND d.held_read IS NULL AND NOT d.wants_check AND d.audit_ready
), best AS (
    -- Per project, one ordered, locked LIMIT 1 walk of its claim-order index from the head, to the
    -- first slot the reader may take that no concurrent claim holds (SKIP LOCKED: claimers pass
    -- each other's rows instead of queueing on them); then the best of those. Order: priority,
    -- then age (slot id), so equal-priority work is served first come, first served.
    --
    -- A task the reader holds or read is passed over by a scalar subquery probing the live-read
    -- unique index (task, reader) for each slot that passes the cheaper filters: one probe per
    -- slot looked at, whatever the reader's history (NOT EXISTS is pulled up into an anti-join
    -- over the whole queue; NOT IN hashes all of the reader's reads on every claim).
    --
    -- skip_busy: a task's k slots are neighbours at the head of the queue, so concurrent readers
    -- take two slots of one task; the second then waited on the task's row for the first's
    -- commit and PostgreSQL rechecked the row (EvalPlanQual, which restarts every subplan of the
    -- statement). Trying the task's one-key advisory lock without waiting (claims alone take it;
    -- tasks.locks) passes such a task over instead. A CASE keeps the lock after the probe.
    SELECT s.*, e.reader_tier, e.lease_seconds, e.sees_model
    FROM claimable e
    CROSS JOIN LATERAL (
        SELECT s.id, s.task_id, s.project_id, s.read_id AS old_read_id, s.reader_id AS old_reader_id, s.priority
        FROM tasks_queueslot s
        WHERE s.project_id = e.project_id
          AND (s.tier = e.reader_tier OR (e.takes_lower AND s.tier < e.reader_tier))
          AND (s.subspecialty = '' OR s.subspecialty = ANY(e.subspecialties))
          AND (s.reader_id IS NULL OR s.lease_expires_at < %(now)s::timestamptz)
          AND CASE WHEN (SELECT r.id FROM tasks_read r WHERE r.task_id = s.task_id AND r.reader_id = %(reader)s::bigint
                           AND r.state IN ('{claimed}', '{submitted}')) IS NOT NULL THEN false
                   WHEN %(skip_busy)s::boolean THEN pg_try_advisory_xact_lock(s.task_id)
                   ELSE true END
        ORDER BY s.priority DESC, s.id
        LIMIT 1
        FOR UPDATE OF s SKIP LOCKED
    ) s
    ORDER BY s.priority DESC, s.id
    LIMIT 1
), c AS (
    SELECT * FROM best WHERE best.old_reader_id IS NULL OR %(take_lapsed)s::boolean
), new_read AS (
    INSERT INTO tasks_read (project_id, task_id, reader_id, state, tier, claimed_at, lease_expires_at,
                            active_seconds, findings_count, slices_touched, idempotency_key, is_check)
    SELECT c.project_id, c.task_id, %(reader)s::bigint, '{claimed}', c.reader_tier, %(now)s::timestamptz,
           %(now)s::timestamptz + make_interval(secs => c.lease_seconds), 0, 0, 0, '', false
    FROM c
    RETURNING id, task_id, tier, lease_expires_at
), leased AS (
    UPDATE tasks_queueslot s
    SET reader_id = %(reader)s::bigint, lease_expires_at = new_read.lease_expires_at, read_id = new_read.id
    FROM new_read, c WHERE s.id = c.id
    RETURNING s.id
), expired AS (
    -- The read whose lease ran out, where this claim took its slot over.
    UPDATE tasks_read r SET state = '{expired}', ended_at = %(now)s::timestamptz
    FROM c WHERE r.task_id = c.task_id AND r.reader_id = c.old_reader_id AND r.id = c.old_read_id
      AND r.state = '{claimed}'
    RETURNING r.id, r.reader_id
), started AS (
    UPDATE tasks_task t SET state = '{in_reading}', updated_at = %(now)s::timestamptz
    FROM c WHERE t.id = c.task_id AND t.state = '{queued}'
    RETURNING t.id
), claimed AS (
    -- The new read with its task, study and protocol version, for the response and the audit
    -- event. The row carries the counts of the other CTEs' writes, so by the time the event's
    -- UPDATE reads it those writes are done and the audit chain head is the last row the
    -- statement locks (tasks.locks' order).
    SELECT new_read.id AS read_id, new_read.task_id AS claimed_task_id, t.project_id, new_read.tier AS read_tier,
           new_read.lease_expires_at,
           -- The lease end as Python's isoformat() writes it in UTC, as every other event's extra has it.
           to_char(new_read.lease_expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS')
             || CASE WHEN mod(extract(microseconds FROM new_read.lease_expires_at)::bigint, 1000000) = 0 THEN ''
                     ELSE to_char(new_read.lease_expires_at AT TIME ZONE 'UTC', '.US') END
             || '+00:00' AS lease_expires_text,
           t.study_id, st.study_uid AS claimed_study_uid, t.series_id,
           t.protocol_version_id, pv.number AS claimed_version, pv.used_at, t.kind, c.sees_model,
           (SELECT left(string_agg(m.role, ',' ORDER BY m.role COLLATE "C"), 200) FROM core_membership m
            WHERE m.user_id = %(reader)s::bigint AND m.project_id = t.project_id AND m.is_active) AS actor_roles,
           c.reader_tier AS actor_tier,
           (SELECT count(*) FROM started) AS started_count,
           (SELECT count(*) FROM leased) + (SELECT count(*) FROM expired) AS other_writes
    FROM new_read
    JOIN c ON true
    JOIN tasks_task t ON t.id = new_read.task_id
    JOIN core_study st ON st.id = t.study_id
    JOIN core_protocolversion pv ON pv.id = t.protocol_version_id
){audit}
SELECT d.held_read, d.held_sees_model, d.wants_check, d.audit_ready,
       claimed.read_id, (SELECT id FROM expired) AS expired_read_id, (SELECT reader_id FROM expired) AS expired_reader_id,
       claimed.claimed_task_id AS task_id, claimed.project_id, claimed.read_tier, claimed.lease_expires_at,
       claimed.study_id, claimed.claimed_study_uid AS study_uid, claimed.series_id,
       se.series_uid, se.modality AS series_modality, se.mr_sequence AS series_mr_sequence,
       claimed.protocol_version_id AS version_id, claimed.claimed_version AS version_number,
       claimed.used_at AS version_used_at,
       CASE WHEN claimed.read_id IS NOT NULL AND claimed.series_id IS NULL THEN (
           SELECT json_agg(json_build_array(x.id, x.series_uid, x.modality, x.mr_sequence) ORDER BY x.id)
           FROM core_series x WHERE x.study_id = claimed.study_id) END AS study_series,
       claimed.other_writes, claimed.started_count, claimed.kind AS task_kind, claimed.sees_model,
       {recorded} AS recorded
FROM decision d
LEFT JOIN claimed ON true
LEFT JOIN core_series se ON se.id = claimed.series_id
