# Desktop tests. tests/test_desktop.py (also in make test-core) needs GIO's command line for
# the trash tests and systemd's tools for the unit and fstab checks; tests/test_trash.py (also
# in make test-core) needs gvfs' trash backend (gio trash --list/--restore/--empty) and a
# D-Bus session bus daemon to start it on; tests/test_filemanager.py
# needs a real file manager under a virtual X server (PCManFM, Xvfb, ImageMagick's
# import/convert for the screenshot, xdotool to look at its windows when debugging a run).
DESKTOP_CORE_APT := libglib2.0-bin systemd gvfs dbus-daemon
DESKTOP_APT := $(DESKTOP_CORE_APT) pcmanfm xvfb xauth xdotool imagemagick

.PHONY: desktop-packages desktop-core-packages

desktop-packages:
	$(call apt_install,$(DESKTOP_APT))

desktop-core-packages:
	$(call apt_install,$(DESKTOP_CORE_APT))

TEST_DEPS += desktop-packages
test-core: desktop-core-packages
