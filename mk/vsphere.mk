# vSphere Content Library test peer: VMware's vcsim simulator, built offline from Debian's
# govmomi library with the project's own small main (tests/peers/vcsim/main.go).
#   make vcsim   install golang-go + golang-github-vmware-govmomi-dev if missing, build the binary
# The binary is cached in .cache/vcsim/ and rebuilt only when main.go changes.
VCSIM_APT := golang-go golang-github-vmware-govmomi-dev
VCSIM_SRC := tests/peers/vcsim/main.go
VCSIM_DIR := .cache/vcsim
VCSIM_BIN := $(VCSIM_DIR)/vcsim
VCSIM_SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: vcsim vcsim-packages

vcsim: $(VCSIM_BIN)

vcsim-packages:
	@missing=""; for p in $(VCSIM_APT); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(VCSIM_SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(VCSIM_SUDO) apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

# GOPATH style, offline: the package lives in a private GOPATH entry so `go build` finds
# govmomi in /usr/share/gocode without any module download.
$(VCSIM_BIN): $(VCSIM_SRC) | vcsim-packages
	@mkdir -p $(VCSIM_DIR)/gopath/src/assetfs-vcsim $(VCSIM_DIR)/gocache
	cp $(VCSIM_SRC) $(VCSIM_DIR)/gopath/src/assetfs-vcsim/main.go
	cd $(VCSIM_DIR)/gopath/src/assetfs-vcsim && \
	  GO111MODULE=off GOFLAGS= GOPROXY=off GOPATH=$(CURDIR)/$(VCSIM_DIR)/gopath:/usr/share/gocode \
	  GOCACHE=$(CURDIR)/$(VCSIM_DIR)/gocache \
	  go build -o $(CURDIR)/$(VCSIM_BIN).tmp . && mv $(CURDIR)/$(VCSIM_BIN).tmp $(CURDIR)/$(VCSIM_BIN)

TEST_DEPS += vcsim
