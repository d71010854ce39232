"""Rules: YAML rule files -> validated, compiled rules, indexed by trigger."""

from crm_notify.rules._project import PROJECT_FILE_NAMES, project_file_json_schema
from crm_notify.rules.conditions import CONDITION_VARIABLES, Condition, compile_condition
from crm_notify.rules.durations import InvalidDurationError, format_duration, parse_duration
from crm_notify.rules.engine import RuleSet
from crm_notify.rules.loader import (
    lint_rules,
    load_rule_file,
    load_rules,
    rule_file_json_schema,
    rule_files,
)
from crm_notify.rules.model import DEFAULT_DEDUPE_WINDOW, Purpose, Rule, Step
from crm_notify.rules.triggers import (
    CART_ACTIVITY_EVENTS,
    EventTrigger,
    IdentifyTrigger,
    IdleTrigger,
    OrderStatusTrigger,
    Trigger,
)

__all__ = [
    "CART_ACTIVITY_EVENTS",
    "CONDITION_VARIABLES",
    "DEFAULT_DEDUPE_WINDOW",
    "PROJECT_FILE_NAMES",
    "Condition",
    "EventTrigger",
    "IdentifyTrigger",
    "IdleTrigger",
    "InvalidDurationError",
    "OrderStatusTrigger",
    "Purpose",
    "Rule",
    "RuleSet",
    "Step",
    "Trigger",
    "compile_condition",
    "format_duration",
    "lint_rules",
    "load_rule_file",
    "load_rules",
    "parse_duration",
    "project_file_json_schema",
    "rule_file_json_schema",
    "rule_files",
]
