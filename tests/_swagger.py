"""Swagger UI (the service's /docs) driven in a browser by selenium, as a user tries a method."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Tried:
    """What the page showed after "Execute": the status, the response body, and the whole
    operation block's text (which includes the curl line of the request it sent)."""

    status: str
    response: str
    block: str
    example: str  # the request body Swagger offered before it was replaced


def try_it_out(browser: Any, path: str, actor_id: str, body: str, token: str | None = None) -> Tried:
    """On an open /docs page: give the token in the page's own form if there is one to give,
    open the operation of ``path``, "Try it out", fill in ``actor_id``, replace the example
    body with ``body`` and "Execute"; waits up to 30 s for each element."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 30)
    if token is not None:
        field = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, "#token input[name=token]")))
        field.send_keys(token)
        browser.find_element(By.CSS_SELECTOR, "#token button[type=submit]").click()
    summary = wait.until(
        ec.element_to_be_clickable((By.CSS_SELECTOR, f'.opblock-summary-path[data-path="{path}"]'))
    )
    summary.click()
    block = summary.find_element(By.XPATH, "./ancestor::div[contains(@class, 'opblock ')]")
    wait.until(lambda _: block.find_element(By.CSS_SELECTOR, ".try-out__btn")).click()
    field = wait.until(lambda _: block.find_element(By.CSS_SELECTOR, "input[placeholder='actor_id']"))
    field.send_keys(actor_id)
    area = block.find_element(By.CSS_SELECTOR, "textarea.body-param__text")
    example = area.get_attribute("value")
    area.send_keys(Keys.CONTROL, "a")  # replace it, as a user would
    area.send_keys(Keys.DELETE)
    area.send_keys(body)
    block.find_element(By.CSS_SELECTOR, "button.execute").click()
    cell = ".live-responses-table tr.response .response-col_status"
    status = wait.until(lambda _: block.find_element(By.CSS_SELECTOR, cell))
    response = block.find_element(By.CSS_SELECTOR, ".live-responses-table .response-col_description pre")
    return Tried(status.text.strip(), response.text, block.text, example)
