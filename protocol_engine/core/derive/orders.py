"""Orders in scope: the draft orders (order hooks) or the active protocol order and course (elsewhere) -> `order`
facts (drug, route, dose in mg and mg/kg, infusion time, the dose as written), and `order-issue` facts for what
could not be read (DQ-06).
"""

from __future__ import annotations

import datetime as dt
import re
from typing import TYPE_CHECKING

from .. import display, units
from ..model import Fact
from ..records import Chart, Concept, MedicationRecord, OrderIssue, Quantity
from ..valuesets import ValueSetIndex
from .common import Semantics, as_written, fmt_num, fmt_time, hours_since
from .course import Course
from .medications import Medicines, name_of
from .readings import Reading, ReadingBuilder

if TYPE_CHECKING:
    from ...pack.protocol import Protocol

_STRENGTH = re.compile(r"(\d+(?:\.\d+)?)\s*(MG/ML|mg/mL|mg/ml)\b")


class Orders:
    """The order facts of one call; reads drugs and routes through Medicines, units through the ReadingBuilder."""

    def __init__(self, protocol: Protocol, index: ValueSetIndex, semantics: Semantics, medicines: Medicines,
                 builder: ReadingBuilder) -> None:
        self.p = protocol
        self.index = index
        self.sem = semantics
        self.medicines = medicines
        self.build = builder

    def in_scope(self, chart: Chart) -> bool:
        """Whether a draft order in scope is (or may be) a protocol drug; False only when provably none is."""
        if any(selected and self.medicines.drug_of(o.medication) for o, selected in chart.draft_orders):
            return True
        return any(self.issue_drug(i) != "" for i in chart.order_issues)

    def issue_drug(self, issue: OrderIssue) -> str | None:
        """The protocol drug of a draft order that could not be fully read; "" when it is provably none,
        None when it could not be identified at all."""
        if issue.medication is None:
            return None
        drug = self.medicines.drug_of(issue.medication)
        if drug is not None:
            return drug
        return "" if issue.identified else None

    def facts(self, chart: Chart, hook: str, governing: dict[str, Reading], course: Course,
                now: dt.datetime) -> list[Fact]:
        """The drug and route in scope: the selected draft orders at order hooks; elsewhere the protocol course.

        Outside order hooks scope comes from active orders of the protocol's drugs first, then the latest
        protocol administrations (their route). A medicine of no protocol drug never enters (or removes) scope.
        """
        local = display.Local(self.sem.zone, now)
        sources: list[tuple[MedicationRecord, bool]] = []
        if hook in ("order-select", "order-sign"):
            sources = [(o, True) for o, selected in chart.draft_orders if selected]
        else:
            sources = [(m, False) for m in chart.medications if m.kind == "request"
                       and m.status in self.sem.med_active["request"]
                       and self.medicines.drug_of(m.medication) is not None]
        facts: list[Fact] = []
        weight_spec = self.p.order.get("weight") or {}
        weight = governing.get(weight_spec.get("measure", ""))
        weight_kg = None
        if weight is not None and hours_since(now, weight.time) <= weight_spec["within_h"]:
            weight_kg = weight.values.get("value")
        for order, draft in sources:
            drug = self.medicines.drug_of(order.medication)
            if drug is None:
                continue
            route = self.medicines.route_of(order.route)
            if not draft and route == "unspecified" and course.has_prior and course.drug == drug:
                route = course.latest_route()
            fact: Fact = {"t": "order", "drug": drug, "route": route, "draft": draft, "readable": True,
                          "refs": [order.ref], "new_course": course.new_course,
                          "weight_known": weight_kg is not None}
            dose_text = self._dose(order, drug, weight_kg, fact)
            if weight_kg:
                fact["weight"] = weight_kg
            ordered = "" if order.authored is None else (
                f", ordered {local.day(order.authored.date())}" if order.authored_day_only
                else f", ordered {fmt_time(local, order.authored)}")
            fact["describe"] = (f"{'Draft order' if draft else 'Active order'}: {name_of(order.medication, self.index)}"
                                f"{dose_text} {self.medicines.route_label(fact['route'])}{ordered}, {order.ref}")
            facts.append(fact)
            if draft:
                unread = [] if "dose" in fact or "dose_per_kg" in fact else ["dose"]
                if "infusion_time" not in fact and "rate" in fact.get("dose_problem", ""):
                    unread.append("infusion_time")
                if fact["route"] in ("unspecified", "other"):
                    unread.append("route")
                if unread:
                    what = " and ".join("infusion time" if u == "infusion_time" else u for u in unread)
                    problem = f"the {what} could not be read"
                    if fact.get("dose_problem"):
                        problem += f" ({fact['dose_problem']})"
                    facts.append(self._order_issue(order.ref, drug, order.medication, problem, unread))
        if not facts and hook not in ("order-select", "order-sign") and course.has_prior:
            # No active protocol order: the patient is on treatment through the course itself.
            route = course.latest_route()
            fact = {"t": "order", "drug": course.drug, "route": route, "draft": False,
                    "new_course": course.new_course, "weight_known": weight_kg is not None,
                    "refs": [course.last.ref],
                    "describe": f"Current {course.drug} course, last dose "
                                f"{fmt_time(local, course.last.time, course.last.latest)} "
                                f"{self.medicines.route_label(route)}, {course.last.ref}"}
            if weight_kg:
                fact["weight"] = weight_kg
            facts.append(fact)
        if hook in ("order-select", "order-sign"):
            facts.extend(self._unreadable_orders(chart, course, weight_kg))
        return facts

    def _unreadable_orders(self, chart: Chart, course: Course, weight_kg: float | None) -> list[Fact]:
        """Draft orders rejected whole (invalid, unresolvable drug). How far they are still evaluated:

        - drug identified from the raw JSON as a protocol drug: an order fact with that drug and nothing
          else (route "unspecified", no dose), so every check on the patient and the drug still runs
          (contraindications, interactions, monitoring, timing); the dose and route checks cannot, and the
          order-issue fact names them;
        - drug provably not a protocol drug: out of scope, like any other order;
        - drug not identifiable: no check can be tied to it; the order-issue fact says so.
        """
        facts: list[Fact] = []
        for issue in chart.order_issues:
            drug = self.issue_drug(issue)
            if drug == "":
                continue
            label = name_of(issue.medication, self.index) if issue.medication is not None else "medication not readable"
            if issue.foreign:
                drug = None  # another patient's order: nothing about this patient is judged against it
            # An unidentified drug is "unidentified": no drug-scoped rule matches it, the unscoped DQ rules do.
            facts.append({"t": "order", "drug": drug or "unidentified", "route": "unspecified", "draft": True,
                          "refs": [issue.ref], "new_course": course.new_course,
                          "weight_known": weight_kg is not None, "readable": False,
                          "describe": f"Draft order (not fully readable): {label}, {issue.ref}"})
            fact = self._order_issue(issue.ref, drug, issue.medication, issue.problem,
                                     ["dose", "route"] if drug else ["drug"])
            if issue.foreign:
                fact["foreign"] = True
                fact["describe"] = f"Draft order {issue.ref} ({label}): {issue.problem}"
            facts.append(fact)
        return facts

    def _order_issue(self, ref: str, drug: str | None, medication: Concept | None, problem: str,
                     unread: list[str]) -> Fact:
        label = name_of(medication, self.index) if medication is not None and medication != Concept() else None
        if drug and label:  # "ketamine", "esketamine Nasal Spray [Spravato]": the drug once
            what = label if drug.lower() in label.lower() else f"{drug}, {label}"
        else:
            what = drug or (f"{label}, not identified" if label else "drug not identified")
        return {"t": "order-issue", "refs": [ref], "drug": drug or "unidentified", "problem": problem,
                "unread": unread, "checks": "", "describe": f"Draft order {ref} ({what}): {problem}"}

    def _amount(self, q: Quantity, drug: str, per: str,
                concentration: Quantity | None) -> tuple[float | None, str | None]:
        """A dose or rate in mg (per = "") or mg/h (per = "/h"): (value, which of mg or mg/kg it is in).

        Units as ordered are read through the protocol's `units:` table; a count of devices or sprays
        through the drug's `count_units`; a volume (mL, mL/h) through the product's concentration.
        """
        if q.value is None or not q.unit:
            return None, None
        unit = self.build.ucum(q.unit)
        count = self.p.count_units.get(drug, {}).get(q.unit) or self.p.count_units.get(drug, {}).get(unit)
        if count is not None and not per:
            f = units.factor(count[1], "mg")
            return (q.value * count[0] * f, "mg") if f is not None else (None, None)
        for target in ("mg" + per, "mg/kg" + per):
            f = units.factor(unit, target)
            if f is not None:
                return q.value * f, target.removesuffix(per)
        if concentration is not None and concentration.value and concentration.unit:
            per_volume = units.factor(self.build.ucum(concentration.unit), "mg/mL")
            f = units.factor(unit, "mL" + per)
            if per_volume is not None and f is not None:
                return q.value * f * concentration.value * per_volume, "mg"
        return None, None

    def _concentration(self, order: MedicationRecord) -> Quantity | None:
        """The product's strength: Medication.ingredient.strength, else an RxNorm-style name (`50 MG/ML`)."""
        if order.concentration is not None:
            return order.concentration
        for text in order.medication.texts():
            found = _STRENGTH.search(text or "")
            if found:
                return Quantity(float(found.group(1)), found.group(2).replace("ML", "mL").replace("MG", "mg"))
        return None

    def _dose(self, order: MedicationRecord, drug: str, weight_kg: float | None, fact: Fact) -> str:
        """Dose (mg, mg/kg) and infusion time of an order into `fact`; the dose as written, for the card.

        A doseRange is judged by its upper bound (`dose_range` says so on the card). A dose or rate whose
        unit cannot be read leaves the field out: the dose checks do not run, and the order's data-quality
        card says so (`dose_problem`).
        """
        q = order.dose
        concentration = self._concentration(order)
        problems = []
        if q is not None:
            value, kind = self._amount(q, drug, "", concentration)
            if q.value is not None and q.value <= 0:
                problems.append(f"dose {fmt_num(q.value)} {q.unit or ''} is not a positive amount".replace("  ", " "))
            elif kind == "mg" and value is not None:
                fact["dose"] = round(value, 3)
                if weight_kg:
                    fact["dose_per_kg"] = round(value / weight_kg, 4)
            elif kind == "mg/kg" and value is not None:
                fact["dose_per_kg"] = round(value, 4)
                if weight_kg:
                    fact["dose"] = round(value * weight_kg, 3)
            elif q.value is None:
                problems.append("dose has no upper bound" if order.dose_low is not None else "dose has no value")
            else:
                problems.append(f"dose unit '{q.unit}' cannot be read" if q.unit else "dose has no unit")
        hours = order.duration_h
        rate = order.rate
        if rate is not None and rate.value is not None and rate.value <= 0:
            problems.append(f"infusion rate {fmt_num(rate.value)} {rate.unit or ''} is not a positive rate"
                            .replace("  ", " "))
        elif hours is None and rate is not None and rate.value:
            # only a concentration stated for the infused product: a vial strength in the name is not the bag's
            value, kind = self._amount(rate, drug, "/h", order.concentration)
            if value and kind == "mg/kg" and weight_kg:
                value, kind = value * weight_kg, "mg"
            if value and kind == "mg" and "dose" in fact:
                hours = fact["dose"] / value
            elif not value and rate.unit and order.concentration is None \
                    and units.factor(self.build.ucum(rate.unit), "mL/h"):
                problems.append(f"infusion time could not be checked: rate {fmt_num(rate.value)} {rate.unit} "
                                "with no concentration stated for the infused product")
            elif not value:
                problems.append(f"infusion rate unit '{rate.unit}' cannot be read" if rate.unit
                                else "infusion rate has no unit")
        if hours is not None:
            fact["infusion_time"] = round(hours, 4)
        if problems:
            fact["dose_problem"] = "; ".join(problems)
        if q is None or q.value is None:
            return ""
        shown = display.unit(q.unit, self.p.display_units, q.value) if q.unit else "(no unit)"
        text = f" {as_written(q.value)} {shown}"
        if order.dose_low is not None and order.dose_low.value is not None:
            text = f" {as_written(order.dose_low.value)}-{as_written(q.value)} {shown}"
            fact["dose_range"] = text.strip()
        return text
