"""
virtseed's progress outputter: ``salt-run cloud.profile`` prints each clone step as one line
(``web1  started  0.6 s``) instead of the progress event's dict.

The runner's progress events name this outputter; ``salt-run`` uses it unless ``--out``
chooses another (``--out json`` prints the events as JSON, as before).
"""

import salt.output

__virtualname__ = "virtseed_progress"


def __virtual__():
    return __virtualname__


def output(data, **kwargs):  # pylint: disable=unused-argument
    """The event's `message`; anything else as Salt's `nested` outputter shows it."""
    event = data.get("event") if isinstance(data, dict) else None
    if isinstance(event, dict) and "message" in event:
        return str(event["message"])
    return salt.output.out_format(data, "nested", __opts__)
