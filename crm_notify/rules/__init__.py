"""Rules: YAML rule files -> validated, compiled rules, indexed by trigger."""

from crm_notify.rules.conditions import CONDITION_VARIABLES, Condition, compile_condition
from crm_notify.rules.engine import RuleSet
from crm_notify.rules.loader import (
    lint_rules,
    load_rule_file,
    load_rules,
    rule_file_json_schema,
    rule_files,
)
from crm_notify.rules.model import Purpose, Rule
from crm_notify.rules.triggers import EventTrigger, IdentifyTrigger, OrderStatusTrigger, Trigger

__all__ = [
    "CONDITION_VARIABLES",
    "Condition",
    "EventTrigger",
    "IdentifyTrigger",
    "OrderStatusTrigger",
    "Purpose",
    "Rule",
    "RuleSet",
    "Trigger",
    "compile_condition",
    "lint_rules",
    "load_rule_file",
    "load_rules",
    "rule_file_json_schema",
    "rule_files",
]
