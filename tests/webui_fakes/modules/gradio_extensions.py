"""Fake ``modules.gradio_extensions`` of Forge (lllyasviel/stable-diffusion-webui-forge at dfdcbab): the
``EventWrapper`` Forge puts around every event listener of every gradio component.

Forge patches ``__init__`` of every gradio component class when the WebUI starts; here ``repaired_init``
returns such an ``__init__`` for one class, for a test to install with ``monkeypatch`` (and to have undone
after it). Only the part that matters to extensions is kept: the listener becomes an object whose
``__call__(*args, **kwargs)`` maps ``_js`` to ``js``, so its signature names neither.
"""

from __future__ import annotations

from functools import wraps


class EventWrapper:
    def __init__(self, replaced_event):
        self.replaced_event = replaced_event
        self.has_trigger = getattr(replaced_event, "has_trigger", None)
        self.event_name = getattr(replaced_event, "event_name", None)
        self.callback = getattr(replaced_event, "callback", None)
        self.real_self = getattr(replaced_event, "__self__", None)

    def __call__(self, *args, **kwargs):
        if "_js" in kwargs:
            kwargs["js"] = kwargs["_js"]
            del kwargs["_js"]
        return self.replaced_event(*args, **kwargs)

    @property
    def __self__(self):
        return self.real_self


def repaired_init(grclass):
    """``grclass.__init__`` as Forge's ``repair`` leaves it: every event of the instance wrapped."""
    original = grclass.__init__

    @wraps(original)
    def __repaired_init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        for event in self.EVENTS:
            setattr(self, str(event), EventWrapper(getattr(self, str(event))))

    return __repaired_init__
