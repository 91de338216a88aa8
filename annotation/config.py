"""The Label Studio labeling config and task data, as projections of rf1m.schema.

Annotators see the generated advert large, the product and its title and prompt beside it, a single
choice Available / Not available (hotkeys 1 / 2), the failure reasons (hotkeys q w e r t, several may
be picked) shown only when Not available, and an optional rectangle to mark the defect.
"""

from __future__ import annotations

from functools import lru_cache
from html import escape

from label_studio_sdk.label_interface import LabelInterface

from rf1m import schema

VERDICT = "verdict"
REASONS = "reasons"
DEFECT = "defect"
VERDICT_TITLES = {"available": "Available", "not_available": "Not available"}
# The Label Studio user record says who is simulated: the panel creates its users with this first name,
# and pull reads `source` from the record, so labels never depend on the panel's code.
SIMULATED_FIRST_NAME = "Simulated"
REASON_HOTKEYS = "qwertyuiop"


def labeling_config() -> str:
    reasons = "\n".join(
        f'      <Choice value="{r.name}" alias="{r.name}" hotkey="{REASON_HOTKEYS[i]}" '
        f'hint="{escape(r.title)}: {escape(r.definition)}"/>'
        for i, r in enumerate(schema.REASONS))
    return f"""<View>
  <Style>.rf1m-row {{ display: flex; gap: 16px; }} .rf1m-main {{ flex: 3; }} .rf1m-side {{ flex: 1; }}</Style>
  <Header value="Is this advert usable as it is?"/>
  <View className="rf1m-row">
    <View className="rf1m-main">
      <Image name="image" value="$image" zoom="true" zoomControl="true"/>
    </View>
    <View className="rf1m-side">
      <Header value="Product" size="5"/>
      <Image name="product" value="$product"/>
      <Text name="title" value="$title"/>
      <Header value="Prompt" size="5"/>
      <Text name="prompt" value="$prompt"/>
    </View>
  </View>
  <Choices name="{VERDICT}" toName="image" choice="single" required="true" showInline="true">
    <Choice value="available" alias="available" hotkey="1" hint="{escape(schema.AVAILABLE.definition)}"/>
    <Choice value="not_available" alias="not_available" hotkey="2" hint="Pick every reason below"/>
  </Choices>
  <View visibleWhen="choice-selected" whenTagName="{VERDICT}" whenChoiceValue="not_available">
    <Header value="Why not? (one or more)" size="5"/>
    <Choices name="{REASONS}" toName="image" choice="multiple" showInline="true">
{reasons}
    </Choices>
    <RectangleLabels name="{DEFECT}" toName="image">
      <Label value="defect" hotkey="d"/>
    </RectangleLabels>
  </View>
</View>"""


@lru_cache(maxsize=1)
def label_interface() -> LabelInterface:
    """The labelling config parsed by the SDK, checked against the taxonomy it was derived from.

    The layout (side panel, reasons shown only for Not available) is written as XML because
    `LabelInterface.create` only lays tags out flat; the SDK then parses it, and this check fails loudly
    if a control lost a choice, so push never creates a project whose config cannot hold a label."""
    li = LabelInterface(labeling_config())
    want = {VERDICT: list(schema.VERDICTS), REASONS: list(schema.REASON_NAMES)}
    got = {name: li.get_control(name).labels for name in want}
    if got != want:
        raise AssertionError(f"labelling config out of step with rf1m.schema: {got} != {want}")
    return li


def instructions() -> str:
    """Shown to annotators before they start (the project's `expert_instruction`)."""
    items = "".join(f"<li><b>{escape(r.title)}</b> (<code>{r.name}</code>): {escape(r.definition)}</li>"
                    for r in schema.LABELS)
    keys = ", ".join(f"{REASON_HOTKEYS[i]} = {escape(r.title)}" for i, r in enumerate(schema.REASONS))
    return (f"<p>Judge whether each generated advert could be published as it is. Press <b>1</b> for "
            f"Available or <b>2</b> for Not available, then pick every reason that applies ({keys}); "
            f"optionally press <b>d</b> and draw a box around the defect. Submit with Ctrl+Enter.</p>"
            f"<ul>{items}</ul><p>A pre-label from RFNet may be filled in: confirm it or fix it.</p>")


def choice_result(verdict: str, reasons: list[str]) -> list[dict]:
    """A Label Studio `result` list for a verdict and its reasons (annotations and predictions alike)."""
    out = [{"from_name": VERDICT, "to_name": "image", "type": "choices", "value": {"choices": [verdict]}}]
    if verdict == "not_available" and reasons:
        out.append({"from_name": REASONS, "to_name": "image", "type": "choices", "value": {"choices": list(reasons)}})
    return out
