"""A view that lists features: one is selected (its pane opens beneath), any can be added to a steering widget,
and the list's labels follow the statistics. The contrast and probe views are two of these."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import traitlets

from gemscope_widgets.errors import GemscopeError

from .base import ViewWidget
from .messages import PING, MessageTable


class FeatureListView(ViewWidget):
    """A :class:`~.base.ViewWidget` of a feature list: ``selected_feature`` (-1 when none; callbacks of
    :meth:`on_select` hear each selection, e.g. to open its pane), the view's "steer" message (or
    :meth:`add_to_steer`) adds a feature to the ``steer`` widget given, and :meth:`close` drops the statistics
    subscription a subclass keeps in ``_unsubscribe``. ``NO_STEER`` is the error raised when there is no steering
    widget (a subclass's own :class:`GemscopeError` and words)."""

    MESSAGES: ClassVar[MessageTable] = {"steer": {"feature": (int,)}, "ping": PING}
    """What the view sends: ``steer`` (a feature to add to the steering widget) and the liveness ping."""
    HANDLERS: ClassVar[Mapping[str, str]] = {"steer": "add_to_steer"}
    NO_STEER: ClassVar[GemscopeError] = GemscopeError(
        "This view has no steering widget: build it with steer=scope.steer(prompt).")

    selected_feature = traitlets.Int(-1).tag(sync=True)
    """The selected feature, -1 when none."""
    can_steer = traitlets.Bool(False).tag(sync=True)
    error = traitlets.Unicode("").tag(sync=True)

    def __init__(self, *, steer: Any = None, **kwargs: Any) -> None:
        self.steer = steer
        self._callbacks: list[Callable[[int], Any]] = []
        self._unsubscribe: Callable[[], None] = lambda: None
        super().__init__(can_steer=steer is not None, **kwargs)

    def close(self) -> None:
        unsubscribe = getattr(self, "_unsubscribe", None)  # None when the constructor refused its input
        if unsubscribe is not None:
            unsubscribe()
        super().close()

    def on_select(self, callback: Callable[[int], Any]) -> None:
        """Call ``callback(feature)`` whenever a feature is selected."""
        self._callbacks.append(callback)

    @traitlets.observe("selected_feature")
    def _selected(self, change: Any) -> None:
        if change["new"] >= 0:
            for callback in self._callbacks:
                callback(int(change["new"]))

    def add_to_steer(self, feature: int) -> None:
        """Add ``feature`` to the steering widget given as ``steer=``."""
        if self.steer is None:
            raise type(self.NO_STEER)(str(self.NO_STEER))
        self.steer.add_feature(int(feature))


__all__ = ["FeatureListView"]
