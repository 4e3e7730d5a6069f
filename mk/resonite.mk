# Resonite IO tests: the thumbnailer test runs gdk-pixbuf-thumbnailer on items of a mount,
# and the WebP items need gdk-pixbuf's WebP loader. The gRPC stubs need no step here: they
# are compiled from assetfs/drivers/resonite/proto/ by grpcio-tools on first import.
#   make resonite-packages   install the Debian packages below if missing
RESONITE_APT := libgdk-pixbuf2.0-bin webp-pixbuf-loader

.PHONY: resonite-packages

resonite-packages:
	$(call apt_install,$(RESONITE_APT))

TEST_DEPS += resonite-packages
