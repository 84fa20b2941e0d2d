"""Lifecycle policies in ECR's JSON format and their evaluation.

A policy is {"rules": [{"rulePriority": N, "description": ..., "selection": {"tagStatus": "tagged" | "untagged"
| "any", "tagPrefixList": [...], "tagPatternList": [...], "countType": "imageCountMoreThan" | "sinceImagePushed"
| "sinceImagePulled", "countUnit": "days", "countNumber": N}, "action": {"type": "expire"} | {"type":
"transition", "targetStorageClass": "archive"}}]}. As in ECR, rules apply in ascending rulePriority, an image is
claimed by the first rule whose tag selection matches it, and a `tagStatus: any` rule must have the highest
rulePriority. Beyond ECR: digests in the in-use set (what runs somewhere) are never acted on.
"""

from __future__ import annotations

import fnmatch
import time
from dataclasses import dataclass, field
from typing import Any

from ultraplane.registry.errors import RegistryError

_COUNT_TYPES = ("imageCountMoreThan", "sinceImagePushed", "sinceImagePulled")
_DAY = 86400.0


@dataclass
class ImageInfo:
    digest: str
    tags: list[str]
    pushed: float
    pulled: float | None = None


@dataclass
class Rule:
    priority: int
    description: str
    tag_status: str
    prefixes: list[str]
    patterns: list[str]
    count_type: str
    count_number: int
    action: str  # "expire" or "archive"

    def selects(self, image: ImageInfo) -> bool:
        if self.tag_status == "untagged":
            return not image.tags
        if self.tag_status == "any":
            return True
        if not image.tags:
            return False
        if self.prefixes:
            return any(tag.startswith(prefix) for tag in image.tags for prefix in self.prefixes)
        return any(fnmatch.fnmatchcase(tag, pattern) for tag in image.tags for pattern in self.patterns)


@dataclass
class Decision:
    digest: str
    tags: list[str]
    rule: int
    action: str
    pushed: float
    reason: str
    protected: bool = False  # in use: reported, never acted on

    def as_json(self) -> dict[str, Any]:
        return {"imageDigest": self.digest, "imageTags": self.tags, "rulePriority": self.rule,
                "action": {"type": "expire" if self.action == "expire" else "transition",
                           **({"targetStorageClass": "archive"} if self.action == "archive" else {})},
                "imagePushedAt": self.pushed, "reason": self.reason, "inUse": self.protected}


def _bad(message: str) -> RegistryError:
    return RegistryError("UNSUPPORTED", {"policy": message}, status=400,
                         message=f"Invalid parameter at 'LifecyclePolicyText' failed to satisfy constraint: "
                                 f"'{message}'")


def parse_policy(document: Any) -> list[Rule]:
    """Validate an ECR lifecycle policy; raises a 400 naming the first problem."""
    if not isinstance(document, dict) or not isinstance(document.get("rules"), list) or not document["rules"]:
        raise _bad("rules must be a non-empty array")
    rules: list[Rule] = []
    for index, raw in enumerate(document["rules"]):
        where = f"rules[{index}]"
        if not isinstance(raw, dict):
            raise _bad(f"{where} must be an object")
        priority = raw.get("rulePriority")
        if not isinstance(priority, int) or isinstance(priority, bool) or priority < 1:
            raise _bad(f"{where}.rulePriority must be a positive integer")
        selection, action = raw.get("selection"), raw.get("action")
        if not isinstance(selection, dict) or not isinstance(action, dict):
            raise _bad(f"{where} needs selection and action objects")
        tag_status = selection.get("tagStatus")
        if tag_status not in ("tagged", "untagged", "any"):
            raise _bad(f"{where}.selection.tagStatus must be tagged, untagged or any")
        prefixes = selection.get("tagPrefixList") or []
        patterns = selection.get("tagPatternList") or []
        if not all(isinstance(p, str) and p for p in [*prefixes, *patterns]):
            raise _bad(f"{where}: tag lists hold non-empty strings")
        if tag_status == "tagged" and not (prefixes or patterns):
            raise _bad(f"{where}: tagStatus tagged needs tagPrefixList or tagPatternList")
        if prefixes and patterns:
            raise _bad(f"{where}: give tagPrefixList or tagPatternList, not both")
        if tag_status != "tagged" and (prefixes or patterns):
            raise _bad(f"{where}: tag lists are only allowed with tagStatus tagged")
        count_type = selection.get("countType")
        if count_type not in _COUNT_TYPES:
            raise _bad(f"{where}.selection.countType must be one of {', '.join(_COUNT_TYPES)}")
        number = selection.get("countNumber")
        if not isinstance(number, int) or isinstance(number, bool) or number < 1:
            raise _bad(f"{where}.selection.countNumber must be a positive integer")
        if count_type == "imageCountMoreThan" and "countUnit" in selection:
            raise _bad(f"{where}: countUnit is not allowed with imageCountMoreThan")
        if count_type != "imageCountMoreThan" and selection.get("countUnit") != "days":
            raise _bad(f"{where}: countUnit must be days with {count_type}")
        kind = action.get("type")
        if kind == "expire":
            verb = "expire"
        elif kind == "transition" and action.get("targetStorageClass") == "archive":
            verb = "archive"
        else:
            raise _bad(f"{where}.action must be expire or transition to targetStorageClass archive")
        rules.append(Rule(priority, str(raw.get("description", "")), tag_status, list(prefixes), list(patterns),
                          count_type, number, verb))
    priorities = [rule.priority for rule in rules]
    if len(set(priorities)) != len(priorities):
        raise _bad("rulePriority values must be unique")
    rules.sort(key=lambda rule: rule.priority)
    if any(rule.tag_status == "any" for rule in rules[:-1]):
        raise _bad("a rule with tagStatus any must have the highest rulePriority")
    return rules


@dataclass
class Evaluation:
    decisions: list[Decision] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"previewResults": [d.as_json() for d in self.decisions]}


def evaluate(rules: list[Rule], images: list[ImageInfo], in_use: set[str], now: float | None = None) -> Evaluation:
    now = time.time() if now is None else now
    result = Evaluation()
    claimed: set[str] = set()
    for rule in rules:
        selected = [image for image in images if image.digest not in claimed and rule.selects(image)]
        claimed.update(image.digest for image in selected)
        if rule.count_type == "imageCountMoreThan":
            selected.sort(key=lambda image: image.pushed, reverse=True)
            hits = [(image, f"more than {rule.count_number} images") for image in selected[rule.count_number:]]
        else:
            limit = now - rule.count_number * _DAY
            pulled = rule.count_type == "sinceImagePulled"
            hits = []
            for image in selected:
                # ECR: an image never pulled counts from its push time.
                moment = (image.pulled or image.pushed) if pulled else image.pushed
                if moment < limit:
                    what = "pulled" if pulled else "pushed"
                    hits.append((image, f"{what} more than {rule.count_number} days ago"))
        for image, reason in hits:
            result.decisions.append(Decision(image.digest, image.tags, rule.priority, rule.action, image.pushed,
                                             reason, protected=image.digest in in_use))
    return result
