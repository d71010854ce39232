"""Rewrite a parsed template so that loops, output and concatenation report to the budget.

The rewrite runs on every AST before code generation (templates and expressions alike):

* each ``{% for %}`` gets a loop filter ``loop_tick() and <test>``: every item pulled from the
  iterable, recursive calls of ``loop(...)`` included, counts against ``max_loop_iterations``
  and checks the deadline;
* each ``~`` becomes a bounded ``concat(...)`` call and each slice ``s[a:b]`` (a copy Jinja
  makes without asking the environment) is charged;
* every output expression passes through ``emit(...)`` and every static text chunk is charged,
  so text buffered inside macros, ``{% set %}`` blocks and filter blocks is counted too;
* ``include``/``import``/``extends`` first pass a deadline checkpoint.

The guards are referenced through :class:`jinja2.nodes.ImportedName`, which template source
cannot spell, so a template can neither call nor shadow them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jinja2 import nodes, pass_eval_context
from jinja2.nodes import EvalContext
from jinja2.runtime import markup_join
from jinja2.visitor import NodeTransformer
from markupsafe import soft_str

from crm_notify.render._budget import active
from crm_notify.render._ops import result_size
from crm_notify.render._sizes import check_growth, text_size


def loop_tick() -> bool:
    """Count one loop item; always true so it can lead a loop filter."""
    active().tick_loop()
    return True


def checkpoint() -> None:
    """Check the deadline."""
    active().check_deadline()


def charge_text(size: int) -> None:
    """Charge ``size`` characters of static template text."""
    active().charge(size)


def emit(value: Any) -> Any:
    """Charge an output expression's size and return it unchanged."""
    active().charge(text_size(value))
    return value


def charged(value: Any) -> Any:
    """Charge a created sequence (a slice copy) to the work budget and return it."""
    active().charge(result_size(value))
    return value


@pass_eval_context
def concat(eval_ctx: EvalContext, *parts: Any) -> str:
    """``a ~ b``: bounded, with Jinja's own escaping rules."""
    budget = active()
    texts = [soft_str(part) if eval_ctx.autoescape else str(part) for part in parts]
    distinct = {id(part): len(text) for part, text in zip(parts, texts, strict=True)}
    total = sum(len(text) for text in texts)
    check_growth(budget.limits, "'~'", total, sum(distinct.values()))
    budget.charge(total)
    return markup_join(texts) if eval_ctx.autoescape else "".join(texts)


#: Guard functions; ``BoundedSandboxEnvironment.call`` passes them straight through.
GUARDS: frozenset[Callable[..., Any]] = frozenset(
    {loop_tick, checkpoint, charge_text, emit, charged, concat}
)


def _guard_call(name: str, lineno: int, args: list[nodes.Expr] | None = None) -> nodes.Call:
    func = nodes.ImportedName(f"{__name__}.{name}", lineno=lineno)
    return nodes.Call(func, args or [], [], None, None, lineno=lineno)


def _statement(name: str, lineno: int, args: list[nodes.Expr] | None = None) -> nodes.ExprStmt:
    return nodes.ExprStmt(_guard_call(name, lineno, args), lineno=lineno)


class _Hardener(NodeTransformer):
    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        tick = _guard_call("loop_tick", node.lineno)
        node.test = tick if node.test is None else nodes.And(tick, node.test, lineno=node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return _guard_call("concat", node.lineno, node.nodes)

    def visit_Getitem(self, node: nodes.Getitem) -> nodes.Node:
        self.generic_visit(node)
        if isinstance(node.arg, nodes.Slice) and node.ctx == "load":
            return _guard_call("charged", node.lineno, [node])
        return node

    def visit_Output(self, node: nodes.Output) -> list[nodes.Node]:
        self.generic_visit(node)
        static = 0
        children: list[nodes.Expr] = []
        for child in node.nodes:
            if isinstance(child, nodes.TemplateData):
                static += len(child.data)
                children.append(child)
            else:
                children.append(_guard_call("emit", child.lineno, [child]))
        node.nodes = children
        if not static:
            return [node]
        return [_statement("charge_text", node.lineno, [nodes.Const(static)]), node]

    def _checkpointed(self, node: nodes.Node) -> list[nodes.Node]:
        self.generic_visit(node)
        return [_statement("checkpoint", node.lineno), node]

    visit_Include = visit_Import = visit_FromImport = visit_Extends = _checkpointed


def harden(tree: nodes.Template) -> nodes.Template:
    """Insert the budget guards into ``tree`` (in place) and return it.

    Parameters:
        tree: a freshly parsed template (or expression wrapper) AST.

    Returns:
        The same tree, guarded; the caller re-sets its environment on the new nodes.
    """
    _Hardener().visit(tree)
    return tree
