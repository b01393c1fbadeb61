"""The record of processing activities (GDPR Art. 30) generated from the schema and policy.

It lists, per personal data category that a declared field carries: the description
from the taxonomy, the data subjects, the source systems, the fields, and each role
and purpose that receives the category, with the mask applied for that role.
The purposes come from the policy's purposes file, and retention from the audit
settings. The controller's name and contacts, transfers and security measures are not
in the schema, so the record leaves them to the controller.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.catalog import Catalog, FieldDecl, TypeDecl
from gateway.policy import PolicyEngine

DEFAULT_RETENTION_MONTHS = 24


def build_ropa(
    catalog: Catalog, engine: PolicyEngine, *, retention_months: int = DEFAULT_RETENTION_MONTHS
) -> dict[str, Any]:
    """Build the record as a JSON-ready dict, in a stable order."""
    subjects_of = _subjects_by_type(catalog)
    categories: dict[str, dict[str, Any]] = {}
    for type_decl in catalog.types.values():
        for decl in type_decl.fields.values():
            if not decl.personal:
                continue
            entry = categories.setdefault(
                decl.category,
                {"fields": [], "systems": set(), "data_subjects": set()},
            )
            entry["fields"].append(decl.qualified_name)
            entry["systems"].add(_system_of(catalog, type_decl, decl))
            entry["data_subjects"].update(subjects_of.get(type_decl.name, ()))

    return {
        "record": "GDPR Art. 30 record of processing activities",
        "policy_version": engine.version,
        "purposes": _purposes(engine),
        "data_subjects": sorted({s for names in subjects_of.values() for s in names}),
        "categories": [
            {
                "category": name,
                "description": catalog.categories.get(name, ""),
                "data_subjects": sorted(entry["data_subjects"]),
                "systems": sorted(entry["systems"]),
                "fields": sorted(entry["fields"]),
                "recipients": _recipients(engine, sorted(entry["fields"])),
            }
            for name, entry in sorted(categories.items())
        ],
        "retention": {
            "audit_log_months": retention_months,
            "personal_data": (
                "not stored by the gateway; each source system's own retention applies"
            ),
        },
    }


def _subjects_by_type(catalog: Catalog) -> dict[str, set[str]]:
    """Map each type to the data subjects its records belong to.

    A type that declares ``subject`` belongs to that subject. A type without one
    belongs to the subjects of every type that reaches it through a relation field.
    """
    subjects = {
        name: {decl.subject} for name, decl in catalog.types.items() if decl.subject is not None
    }
    changed = True
    while changed:
        changed = False
        for name, type_decl in catalog.types.items():
            for decl in type_decl.fields.values():
                target = decl.base_type if decl.is_relation else None
                if target is None or target not in catalog.types:
                    continue
                if catalog.types[target].subject is not None:
                    continue
                inherited = subjects.get(name, set()) - subjects.get(target, set())
                if inherited:
                    subjects.setdefault(target, set()).update(inherited)
                    changed = True
    return subjects


def _system_of(catalog: Catalog, type_decl: TypeDecl, decl: FieldDecl) -> str:
    """Return the system that stores the field's records: for a relation, the target's."""
    if decl.is_relation and decl.base_type in catalog.types:
        return catalog.types[decl.base_type].system
    if decl.link is None:
        return type_decl.system
    return type_decl.links[decl.link].system


def _purposes(engine: PolicyEngine) -> list[dict[str, Any]]:
    roles_of: dict[str, set[str]] = {}
    for role, purposes in engine.purposes.items():
        for purpose in purposes:
            roles_of.setdefault(purpose, set()).add(role)
    return [
        {"purpose": purpose, "roles": sorted(roles)} for purpose, roles in sorted(roles_of.items())
    ]


def _recipients(engine: PolicyEngine, fields: list[str]) -> list[dict[str, Any]]:
    """Return each (role, purpose) that may read a field of the category, and how."""
    recipients = []
    for role in sorted(engine.purposes):
        for purpose in engine.purposes[role]:
            view = engine.view([role], purpose)
            access = set()
            readable = 0
            for field in fields:
                decision = view.decide(field)
                if decision.effect == "deny":
                    continue
                readable += 1
                access.add("allow" if decision.effect == "allow" else f"mask:{decision.mask}")
            if readable:
                recipients.append(
                    {
                        "role": role,
                        "purpose": purpose,
                        "access": sorted(access),
                        "fields": readable,
                    }
                )
    return recipients


def ropa_markdown(record: Mapping[str, Any]) -> str:
    """Render the record as Markdown, one section per data category."""
    lines = [
        "# Record of processing activities (GDPR Art. 30)",
        "",
        f"Generated from the schema and policy version {record['policy_version']}. The "
        "controller's name and contact details, the data protection officer, transfers to "
        "third countries and the security measures are not part of the schema; add them.",
        "",
        "## Purposes",
        "",
        "| purpose | roles |",
        "| --- | --- |",
    ]
    lines += [f"| {item['purpose']} | {', '.join(item['roles'])} |" for item in record["purposes"]]
    lines += ["", "## Data subjects", "", ", ".join(record["data_subjects"]), ""]
    lines += ["## Categories of personal data", ""]
    for item in record["categories"]:
        lines += [
            f"### {item['category']}",
            "",
            item["description"],
            "",
            f"- Data subjects: {', '.join(item['data_subjects']) or 'none declared'}",
            f"- Source systems: {', '.join(item['systems'])}",
            f"- Fields: {', '.join(item['fields'])}",
        ]
        if item["recipients"]:
            lines += ["- Recipients:"]
            lines += [
                f"  - {recipient['role']} for {recipient['purpose']}: "
                f"{', '.join(recipient['access'])} ({recipient['fields']} of "
                f"{len(item['fields'])} fields)"
                for recipient in item["recipients"]
            ]
        else:
            lines += ["- Recipients: none"]
        lines.append("")
    retention = record["retention"]
    lines += [
        "## Retention",
        "",
        f"- Audit log of consultations: {retention['audit_log_months']} months",
        f"- Personal data: {retention['personal_data']}",
        "",
    ]
    return "\n".join(lines)
