"""The fleet dashboard in a real browser: Playwright driving Debian's chromium against `fleet up`'s dashboard.

Screenshots are kept under test-artifacts/ at the repository root.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.fleet.conftest import Fleet
from tests.harness import REPO_ROOT, wait_for

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = REPO_ROOT / "test-artifacts"
VIEWER_RBAC = """
apiVersion: v1
kind: Namespace
metadata: {name: karmada-system}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: viewer, namespace: karmada-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: fleet-viewer}
rules:
- apiGroups: [cluster.karmada.io]
  resources: [clusters]
  verbs: [get, list, watch]
- apiGroups: [cluster.karmada.io]
  resources: [clusters/proxy]
  resourceNames: [r1-c1]
  verbs: [get]
- apiGroups: [fleet.ultraplane.io]
  resources: [evacuations]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: fleet-viewer}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: fleet-viewer}
subjects: [{kind: ServiceAccount, name: viewer, namespace: karmada-system}]
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        # flags as this machine needs them: root (no sandbox), no GPU, no calls to Google's hosts
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        yield launched
        launched.close()


def _url(fleet: Fleet) -> str:
    return (fleet.root / "fleet" / "dashboard-url").read_text().strip()


def _login(browser: Browser, url: str, *, token: str = "", kubeconfig: str = "") -> Page:
    page = browser.new_context(ignore_https_errors=True).new_page()
    page.goto(url)
    expect(page).to_have_url(url + "login")
    if token:
        page.fill("textarea[name=token]", token)
    if kubeconfig:
        page.fill("textarea[name=kubeconfig]", kubeconfig)
    page.click("button[type=submit]")
    return page


def _shot(page: Page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"dashboard-{name}.png"), full_page=True)


def test_admin_sees_the_fleet_live(fleet: Fleet, browser: Browser) -> None:
    url = _url(fleet)
    refused = _login(browser, url, token="not-a-token")
    expect(refused.locator("p.error")).to_contain_text("the fleet API refused these credentials")

    admin_config = Path(fleet.root / "fleet" / "kubeconfig").read_text()
    page = _login(browser, url, kubeconfig=admin_config)
    table = page.locator("#clusters")
    expect(table).to_contain_text("r1-c1")
    for name, region in (("r1-c1", "r1"), ("r2-c1", "r2"), ("r3-c1", "r3")):
        row = table.locator("tr", has_text=name)
        expect(row).to_contain_text(region)
        expect(row).to_contain_text("v1.32.0-ultraplane")
        expect(row).to_contain_text("End of life")  # 1.32 left upstream support on 2026-02-28
    expect(page.locator("nav .user")).to_contain_text("kubernetes-admin")
    _shot(page, "clusters")

    # drill into a member: its pods, updated live through the member's watch
    page.click("text=r1-c1")
    expect(page.locator("h2")).to_have_text("Cluster r1-c1")
    expect(page.locator("#namespaces")).to_contain_text("kube-system")
    marker = page.locator("[data-live]")
    expect(marker).to_have_attribute("data-updates", "1", timeout=30_000)
    created = fleet.kubectl("r1-c1", "create", "deployment", "live-demo", "--image=busybox", "--replicas=1")
    assert created.returncode == 0, created.stderr
    expect(page.locator("#pods-live")).to_contain_text("live-demo-", timeout=60_000)
    _shot(page, "cluster-r1")
    assert fleet.kubectl("r1-c1", "delete", "deployment", "live-demo", "--cascade=foreground").returncode == 0
    expect(page.locator("#pods-live")).not_to_contain_text("live-demo-", timeout=60_000)

    # insights are scanned when a cluster joins; a refresh re-scans on demand
    page.click("nav >> text=Insights")
    section = page.locator("#insight-r1-c1")
    expect(section).to_contain_text("Deprecated APIs removed in Kubernetes v1.33", timeout=60_000)
    before = fleet.json(None, "get", "upgradeinsight", "r1-c1")["status"]["lastScanTime"]
    section.locator("button", has_text="Refresh now").click()
    wait_for(lambda: fleet.json(None, "get", "upgradeinsight", "r1-c1")["status"]["lastScanTime"] != before
             or fleet.json(None, "get", "upgradeinsight", "r1-c1")["spec"].get("refreshRequestedAt", "") > before,
             "the refresh request recorded", timeout=30)
    _shot(page, "insights")

    page.click("nav >> text=Calendar")
    expect(page.locator("#calendar tr", has_text="1.32")).to_contain_text("r1-c1, r2-c1, r3-c1")
    page.click("nav >> text=Evacuations")
    expect(page.locator("#evacuations")).to_be_visible()
    page.click("nav >> text=Log out")
    expect(page).to_have_url(url + "login")
    page.goto(url)
    expect(page).to_have_url(url + "login")


def test_rbac_decides_what_a_viewer_sees(fleet: Fleet, browser: Browser) -> None:
    applied = fleet.kubectl(None, "apply", "-f", "-", input=VIEWER_RBAC)
    assert applied.returncode == 0, applied.stderr
    token = subprocess.run(["kubectl", "--kubeconfig", str(fleet.root / "fleet" / "kubeconfig"), "create", "token",
                            "viewer", "-n", "karmada-system"], capture_output=True, text=True, timeout=60)
    assert token.returncode == 0, token.stderr
    url = _url(fleet)
    page = _login(browser, url, token=token.stdout.strip())
    expect(page.locator("nav .user")).to_contain_text("system:serviceaccount:karmada-system:viewer")
    expect(page.locator("#clusters")).to_contain_text("r2-c1")
    # may not read UpgradeInsights: the column says so rather than showing another user's view
    expect(page.locator("#clusters tr", has_text="r1-c1")).to_contain_text("not permitted")
    page.goto(url + "clusters/r2-c1")
    expect(page.locator("p.error")).to_contain_text('may not get clusters/proxy "r2-c1"')
    page.goto(url + "clusters/r1-c1")
    expect(page.locator("#namespaces")).to_contain_text("default")
    page.goto(url + "insights")
    expect(page.locator("p.error")).to_contain_text("403")
    _shot(page, "viewer")
