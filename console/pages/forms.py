"""A refused registry operation as a form's errors: each message next to the field it names."""

from __future__ import annotations

from shared.registry import ManagementError

FormErrors = dict[str, list[str]]  # field name ('' for the form as a whole) -> messages


def field_errors(err: ManagementError, fields: set[str]) -> FormErrors:
    """``err``'s details by field (``platform_ids[2]`` counts as ``platform_ids``); a detail that
    names no field of the form goes to the form as a whole."""
    errors: FormErrors = {}
    for problem in err.details or []:
        name = problem.path.split("[", 1)[0]
        errors.setdefault(name if name in fields else "", []).append(problem.msg)
    if not errors:
        errors[""] = [err.message]
    return errors
