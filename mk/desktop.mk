# Desktop tests (tests/test_desktop.py, tests/test_filemanager.py): GIO's command line for
# the trash tests, and a real file manager under a virtual X server for the thumbnail and
# download checks (PCManFM, Xvfb, ImageMagick's import/convert for the screenshot, xdotool
# to look at its windows when a run needs debugging).
DESKTOP_APT := libglib2.0-bin pcmanfm xvfb xauth xdotool imagemagick

.PHONY: desktop-packages

desktop-packages:
	$(call apt_install,$(DESKTOP_APT))

TEST_DEPS += desktop-packages
