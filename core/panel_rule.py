"""The panel policy's rule, with no Django import: production (tasks.panels), the protocol check
(core.protocols: its action names) and the benchmark (bench/panel_policy.py) use this one module."""

ANNOTATOR, RADIOLOGIST = 1, 2  # core.roles.Tier values
MAX_READS = 3  # the Task check constraint task_reads_required_1_3
EXTRA_READ, RADIOLOGIST_FIRST_READ = "extra_read", "radiologist_first_read"
ACTIONS = (EXTRA_READ, RADIOLOGIST_FIRST_READ)


def policy_of(rules: dict | None) -> dict | None:
    """The enabled panel policy of a version's rules, or None (off by default)."""
    policy = (rules or {}).get("panel_policy")
    return policy if isinstance(policy, dict) and policy.get("enabled") else None


def panel_for(uncertainty: float, policy: dict | None, k: int, base_tier: int = ANNOTATOR) -> tuple[int, int]:
    """(reads_required, first_read_tier) for a task with this uncertainty: the protocol's k and tier
    unless the policy is on and the model is unsure (uncertainty >= threshold). Never fewer than k."""
    if not policy or not policy.get("enabled") or uncertainty < float(policy["uncertainty_threshold"]):
        return k, base_tier
    if policy.get("action", EXTRA_READ) == RADIOLOGIST_FIRST_READ:
        return k, max(int(base_tier), RADIOLOGIST)
    return min(k + 1, MAX_READS), base_tier
