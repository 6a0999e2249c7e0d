package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// demo is what a run without -repo evaluates and builds: a temporary git repository
// holding a tiny default.nix (one derivation, no nixpkgs, no network) and a gc root
// directory of its own, both removed by remove.
type demo struct {
	repo, gcRoots string
}

func createDemo() (*demo, error) {
	dir, err := os.MkdirTemp("", "genbuild-demo-")
	if err != nil {
		return nil, err
	}
	id := strings.TrimPrefix(filepath.Base(dir), "genbuild-demo-")
	// Under gcroots/, so that Nix's collector sees the roots without more links.
	d := &demo{repo: dir, gcRoots: "/nix/var/nix/gcroots/genbuild-demo-" + id}
	// The nonce makes the derivation new, so that the demo really builds.
	nix := fmt.Sprintf(`{ hostname }: {
  system.toplevel = derivation {
    name = "demo-${hostname}";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    nonce = "%s";
    args = [ "-c" "echo building the demo generation; echo ok > $out" ];
  };
}
`, id)
	if err := os.WriteFile(filepath.Join(dir, "default.nix"), []byte(nix), 0o644); err != nil {
		d.remove()
		return nil, err
	}
	for _, args := range [][]string{
		{"init", "-q"},
		{"add", "-A"},
		{"-c", "user.name=demo", "-c", "user.email=demo@example.org", "commit", "-q", "-m", "demo"},
	} {
		if _, err := git(dir, args...); err != nil {
			d.remove()
			return nil, err
		}
	}
	return d, nil
}

func (d *demo) remove() {
	for _, dir := range []string{d.repo, d.gcRoots} {
		if err := os.RemoveAll(dir); err != nil {
			fmt.Fprintf(os.Stderr, "example: cannot remove %s: %v\n", dir, err)
		}
	}
}

// resolveCommit is the id and subject of rev in repo.
func resolveCommit(repo, rev string) (id, subject string, err error) {
	if id, err = git(repo, "rev-parse", "--verify", "--quiet", rev+"^{commit}"); err != nil {
		return "", "", fmt.Errorf("%s is no commit of %s", rev, repo)
	}
	subject, err = git(repo, "log", "-1", "--format=%s", id)
	return id, subject, err
}

func git(dir string, args ...string) (string, error) {
	out, err := exec.Command("git", append([]string{"-C", dir}, args...)...).Output()
	if err != nil {
		if e, ok := err.(*exec.ExitError); ok && len(e.Stderr) > 0 {
			return "", fmt.Errorf("git %s: %s", strings.Join(args, " "), strings.TrimSpace(string(e.Stderr)))
		}
		return "", fmt.Errorf("git %s: %v", strings.Join(args, " "), err)
	}
	return strings.TrimSpace(string(out)), nil
}
