"""The echo room for tests: see soca_appliance.room_scene (the bench uses it too)."""
from soca_appliance.room_scene import (GREETING, KEY, USER_LEVEL, USER_TEXT, Scene,  # noqa: F401
                                       have_room, long_answer_assets)
