-- The reader-eligibility rule (tasks.routing's docstring says it in words): what a reader may
-- claim on each project. It is the head of a WITH list, two CTEs: tasks/sql/claim.sql starts
-- with it, and tasks.routing.eligibility runs it on its own (``SELECT ... FROM eligible``), so
-- the claim and everything that asks "may this reader take this?" (the calibration and gold
-- checks, the open-read limit's answer, a manager's reassignment) decide by the same text.
--
-- Parameters: reader, reader_roles and role_tiers (core.roles.READER_ROLE_TIERS, in one order),
-- projects (NULL: every project). {braced} names are filled in once, when the text is loaded:
-- the learning app's settings relation (tasks.learning_seam) and the claimed read state.
membership AS (
    -- The reader's active reader memberships, with what their projects say; one row per
    -- membership and sub-specialty held.
    SELECT m.id AS membership_id, m.project_id, m.role, sub.name AS subspecialty, m.is_suspended,
           m.calibrated_at IS NOT NULL AS calibrated,
           p.is_active AS project_active, p.requires_calibration, p.higher_tiers_take_lower_work,
           p.max_open_reads, p.lease_seconds, p.gold_rate,
           coalesce(lc.suggestions_enabled AND NOT lc.is_blind_to_model, false) AS sees_model
    FROM core_membership m
    JOIN core_project p ON p.id = m.project_id
    LEFT JOIN {learning_config} lc ON lc.project_id = m.project_id
    LEFT JOIN LATERAL jsonb_array_elements_text(m.subspecialties) sub(name) ON true
    WHERE m.user_id = %(reader)s::bigint AND m.is_active AND m.role = ANY(%(reader_roles)s::text[])
      AND (%(projects)s::bigint[] IS NULL OR m.project_id = ANY(%(projects)s::bigint[]))
), eligible AS (
    -- An active project, no suspended membership; the reader's tier is their highest reader
    -- role's, and lower tiers' slots are theirs too where the project lets higher tiers take
    -- lower work (``takes_lower``); the sub-specialties are those any membership holds;
    -- calibration is due where the project requires it and no membership has passed it. The
    -- project's settings are the same on each of its rows (min/bool_and only pick one). The
    -- open reads (claimed, lapsed or not, until the sweep ends them) meet max_open_reads
    -- where a claim is made: claim.sql's claimable and decision, routing.Eligibility.at_limit.
    SELECT project_id, min(membership_id) AS first_membership,
           max((%(role_tiers)s::smallint[])[array_position(%(reader_roles)s::text[], role::text)]) AS reader_tier,
           bool_and(higher_tiers_take_lower_work) AS takes_lower,
           coalesce(array_agg(DISTINCT subspecialty) FILTER (WHERE subspecialty IS NOT NULL), '{{}}') AS subspecialties,
           bool_and(requires_calibration) AND NOT bool_or(calibrated) AS needs_calibration,
           min(max_open_reads) AS max_open_reads, min(lease_seconds) AS lease_seconds,
           min(gold_rate) AS gold_rate, bool_or(sees_model) AS sees_model,
           (SELECT count(*) FROM tasks_read o WHERE o.reader_id = %(reader)s::bigint
              AND o.project_id = membership.project_id AND o.state = '{claimed}') AS open_reads
    FROM membership
    GROUP BY project_id
    HAVING bool_and(project_active) AND NOT bool_or(is_suspended)
)
