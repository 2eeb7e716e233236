// Sign-in: the token goes once to POST /console/login, which answers with the session cookie; the
// field is emptied right away, so the token stays neither in the page nor in its history.
import { $, api, ApiError, clear, el } from "./common.js";

const form = $("#signin");
const field = $("#token");
const errors = $("#signin-error");

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const token = field.value.trim();
  field.value = "";
  clear(errors);
  if (!token) return;
  const button = form.querySelector("button");
  button.disabled = true;
  try {
    await api("/console/login", { method: "POST", body: { token } });
    window.location.replace("/console/models");
  } catch (err) {
    const message =
      err instanceof ApiError && err.status === 403
        ? "This token has no admin role: the console needs an admin token."
        : err instanceof ApiError && err.status === 401
          ? "Unknown, revoked or expired token."
          : err.message;
    clear(errors, el("p", { class: "error", role: "alert" }, message));
  } finally {
    button.disabled = false;
    field.focus();
  }
});
field.focus();
