"""The portal: the pages people use to launch and watch their sessions."""

__all__: list[str] = []
