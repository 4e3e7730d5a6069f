# vSphere Content Library test peer: VMware's vcsim simulator, built offline from Debian's
# govmomi library with the project's own small main (tests/peers/vcsim/main.go).
#   make vcsim   install golang-go + golang-github-vmware-govmomi-dev if missing, build the binary
# The binary is cached in .cache/vcsim/ and rebuilt only when main.go changes.
VCSIM_APT := golang-go golang-github-vmware-govmomi-dev
VCSIM_SRC := tests/peers/vcsim/main.go
VCSIM_DIR := .cache/vcsim
VCSIM_BIN := $(VCSIM_DIR)/vcsim
# Go's build cache lives outside the tree: a fresh clone on the same machine builds in seconds
VCSIM_GOCACHE := $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/assetfs/vcsim-gocache

.PHONY: vcsim vcsim-packages

vcsim: $(VCSIM_BIN)

vcsim-packages:
	$(call apt_install,$(VCSIM_APT))

# GOPATH style, offline: the package lives in a private GOPATH entry so `go build` finds
# govmomi in /usr/share/gocode without any module download.
$(VCSIM_BIN): $(VCSIM_SRC) | vcsim-packages
	@echo "== vcsim test peer: go build with Debian's govmomi (about 1-2 min the first time)"
	@mkdir -p $(VCSIM_DIR)/gopath/src/assetfs-vcsim $(VCSIM_GOCACHE)
	cp $(VCSIM_SRC) $(VCSIM_DIR)/gopath/src/assetfs-vcsim/main.go
	cd $(VCSIM_DIR)/gopath/src/assetfs-vcsim && \
	  GO111MODULE=off GOFLAGS= GOPROXY=off GOPATH=$(CURDIR)/$(VCSIM_DIR)/gopath:/usr/share/gocode \
	  GOCACHE=$(VCSIM_GOCACHE) \
	  go build -o $(CURDIR)/$(VCSIM_BIN).tmp . && mv $(CURDIR)/$(VCSIM_BIN).tmp $(CURDIR)/$(VCSIM_BIN)

TEST_DEPS += vcsim
