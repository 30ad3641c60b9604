"""Settings: `settings/*.toml` files that extend `base.toml`, loaded and checked strictly against
`bench.config` (see `loader`: `schema` checks one file, `chain` merges the extends chain,
`checks` checks across keys). Nothing here imports torch.
"""

from bench.settings.loader import (
    expanded,
    file_label,
    find_setting_file,
    list_settings,
    load_setting,
    prompt_setting,
    setting_files,
    settings_in_group,
)

__all__ = [
    "expanded", "file_label", "find_setting_file", "list_settings", "load_setting", "prompt_setting",
    "setting_files", "settings_in_group",
]
