"""The device room: the personalisation loop on the device, one object per user (``studio.room.DeviceRoom``), its
command line (``python -m studio``, ``studio.studio_cli``) and a local studio page served on 127.0.0.1 (``studio.web``).

It reads the device's log store and the last global prior the ClientApp kept, and sends nothing anywhere.
"""
