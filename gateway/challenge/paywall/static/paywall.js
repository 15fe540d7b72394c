// The paywall page's behaviour: watch the checkout, pay with a browser wallet.
// No framework, no external code: the machine serving this may be offline.
//
// A payment the wallet built is kept (in this tab's sessionStorage, keyed by
// what it pays for) until the gateway settles it: an answer with the grant,
// or a definite refusal. Any other outcome (no answer, a 5xx, a proxy's 502,
// a "not now" reason) leaves it kept, and every later try, automatic or a
// click, after a reload too, sends that same payment again: the gateway
// answers a resent payment with the grant it already gave, so a lost answer
// never makes a second payment (DESIGN.md, money rule 6).
(function () {
  "use strict";
  var root = document.getElementById("paywall");
  if (!root) return;
  var T = JSON.parse(document.getElementById("paywall-texts").textContent);
  var statusEl = document.getElementById("status");
  var button = document.getElementById("pay-with-wallet");
  var help = document.getElementById("wallet-help");
  var data = root.dataset;
  var done = false;

  // The gateway's reasons that mean "not taken now, send the same payment again"
  // (as gateway/client/delivery.py RETRYABLE).
  var NOT_NOW = ["chain-unavailable", "broadcast-pending", "payment-in-progress",
                 "store-unavailable"];
  // Automatic resends after an unsettled answer (ms); a Retry-After may ask for more.
  var RESEND_AFTER = [2000, 5000, 10000];
  var MAX_WAIT = 60000;

  function say(text, error) {
    if (!statusEl) return;
    statusEl.textContent = text;
    statusEl.classList.toggle("error", !!error);
  }

  function fill(template, values) {
    // The texts are gettext messages (texts.py): "%(name)s" fields, "%%" a percent sign.
    return template.replace(/%\((\w+)\)s|%%/g, function (whole, k) {
      if (!k) return "%";
      var v = values[k];
      if (typeof v === "number") return v.toLocaleString(document.documentElement.lang || undefined);
      return v === undefined ? "" : String(v);
    });
  }

  function sentence(values) {
    // A gateway's detail ends a sentence in some texts: give it its full stop.
    var detail = String(values.detail === undefined ? "" : values.detail).trim();
    if (detail && !/[.!?]$/.test(detail)) detail += ".";
    var copy = {};
    for (var k in values) copy[k] = values[k];
    copy.detail = detail;
    return copy;
  }

  function opened() {
    done = true;
    say(T.status_paid);
    // The answer that said "paid" set the grant's cookie: ask again.
    window.location.reload();
  }

  function outdated() {
    // "Valid for N more minutes" no longer holds once the request runs out.
    var expiry = document.getElementById("expiry");
    if (expiry) expiry.hidden = true;
  }

  function expired() {
    done = true;
    outdated();
    say(T.status_expired);
    window.location.reload();
  }

  // A phone may pay just as the checkout expires: the gateway still takes
  // such a payment, so keep asking a little longer before making a new one.
  var LATE_MS = 20000;

  function expiring() {
    if (done) return;
    outdated();
    say(T.status_expiring);
    setTimeout(expired, LATE_MS);
  }

  function problemOf(r, body) {
    // A problem+json answer's reason and detail; reason "" when it has none.
    var type = (r.headers.get("Content-Type") || "").split(";")[0].trim().toLowerCase();
    var isProblem = type === "application/problem+json" && body && typeof body === "object";
    var reason = isProblem && typeof body.reason === "string" ? body.reason : "";
    var detail = (isProblem && (body.detail || body.title)) || ("HTTP " + r.status);
    return { reason: reason, detail: String(detail) };
  }

  function definite(r, problem) {
    // A refusal the gateway stands by: a 4xx problem with a reason that is not
    // "not now". A 5xx, a proxy's page, a timeout or a rate limit says nothing.
    return problem.reason !== "" && NOT_NOW.indexOf(problem.reason) < 0 &&
      r.status >= 400 && r.status < 500 && r.status !== 408 && r.status !== 429;
  }

  function readJson(r) {
    return r.text().then(function (text) {
      try { return JSON.parse(text); } catch (e) { return null; }
    }, function () { return null; });
  }

  // --- the checkout's status (a phone wallet pays it) ------------------------------
  var expires = Number(data.expires) * 1000;

  function poll() {
    if (done || !data.statusUrl) return;
    fetch(data.statusUrl, { credentials: "same-origin", cache: "no-store" })
      .then(function (r) {
        return readJson(r).then(function (s) { return { r: r, s: s }; });
      })
      .then(function (answer) {
        if (done) return;
        var r = answer.r, s = answer.s;
        if (r.ok && s && typeof s.status === "string") {
          if (s.status === "paid") return opened();
          if (s.status === "refunded") {
            done = true;  // the operator gave this payment back: nothing to open
            return say(T.status_refunded, true);
          }
          if (s.status === "expired") {
            if (!expires || Date.now() >= expires + LATE_MS) return expired();
            return setTimeout(poll, 1500);
          }
          if (s.status === "underpaid") say(fill(T.status_underpaid, s), true);
          else if (s.status === "refused") {
            // A payment the phone sent that cannot be taken *now* is not refused.
            if (NOT_NOW.indexOf(s.reason) >= 0) say(fill(T.status_phone_not_now, s));
            else say(fill(T.status_phone_refused, sentence(s)), true);
          }
          return setTimeout(poll, 1500);
        }
        var problem = problemOf(r, s);
        if (definite(r, problem)) {
          // This checkout cannot be paid (gone, or not a checkout): stop asking.
          return say(fill(T.status_checkout_gone, sentence(problem)), true);
        }
        // Anything else says nothing about the payment: keep asking.
        setTimeout(poll, 3000);
      })
      .catch(function () { setTimeout(poll, 3000); });
  }

  if (expires) {
    setTimeout(expiring, Math.max(0, expires - Date.now()));
  }
  setTimeout(poll, 1000);

  // --- a BRC-100 wallet on this computer ------------------------------------------
  function wallet(call, args) {
    return fetch(data.walletUrl.replace(/\/$/, "") + "/" + call, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(args),
    }).then(function (r) {
      if (!r.ok) throw new Error("wallet answered " + r.status);
      return r.json();
    });
  }

  function randomBase64(n) {
    var bytes = new Uint8Array(n);
    crypto.getRandomValues(bytes);
    return btoa(String.fromCharCode.apply(null, bytes));
  }

  function toBase64(numbers) {
    var s = "";
    for (var i = 0; i < numbers.length; i++) s += String.fromCharCode(numbers[i]);
    return btoa(s);
  }

  function txidOf(action) {
    // Atomic BEEF (BRC-95) names its subject: 01010101 then the txid, little-endian.
    var tx = action.tx || [];
    if (tx.length >= 36 && tx[0] === 1 && tx[1] === 1 && tx[2] === 1 && tx[3] === 1) {
      var hex = "";
      for (var i = 35; i >= 4; i--) hex += (tx[i] < 16 ? "0" : "") + tx[i].toString(16);
      return hex;
    }
    return typeof action.txid === "string" ? action.txid : "";
  }

  // --- the payment this page built, kept until the gateway settles it --------------
  var KEEP = "farebox.payment " + JSON.stringify([data.server, data.payUrl, data.method,
                                                  data.resource]);
  var inMemory = null; // when sessionStorage is refused (some private modes)

  function kept() {
    try {
      var raw = window.sessionStorage.getItem(KEEP);
      if (raw) return JSON.parse(raw);
    } catch (e) { /* no storage: the copy in memory below */ }
    return inMemory;
  }

  function keep(payment) {
    inMemory = payment;
    try { window.sessionStorage.setItem(KEEP, JSON.stringify(payment)); } catch (e) { /* memory */ }
  }

  function forget() {
    inMemory = null;
    try { window.sessionStorage.removeItem(KEEP); } catch (e) { /* memory only */ }
  }

  var payLabel = button ? button.textContent : "";
  var sending = false;
  var resendTimer = null;

  function showKept(isKept) {
    if (button) button.textContent = isKept ? T.resend_button : payLabel;
  }

  function build() {
    // Ask the wallet for a payment. Nothing reaches the gateway here, so any
    // failure is a definite "nothing sent".
    var prefix = randomBase64(16);
    var time = String(Date.now());
    var sender;
    var satoshis = Number(data.satoshis);
    return wallet("getPublicKey", { identityKey: true })
      .catch(function () {
        throw { noWallet: true };
      })
      .then(function (me) {
        sender = me.publicKey;
        // BRC-29: the key this payment goes to, derived by the wallet itself.
        return wallet("getPublicKey", {
          protocolID: [2, "3241645161d8"],
          keyID: prefix + " " + btoa(time),
          counterparty: data.server,
        });
      })
      .then(function (derived) {
        return fetch("/.well-known/farebox/p2pkh/" + derived.publicKey).then(function (r) {
          if (!r.ok) throw new Error("HTTP " + r.status);
          return r.json();
        });
      })
      .then(function (script) {
        return wallet("createAction", {
          description: "Payment for " + data.resource,
          outputs: [{ lockingScript: script.script, satoshis: satoshis,
                      outputDescription: "Farebox payment" }],
          options: { randomizeOutputs: false },
        });
      })
      .then(function (action) {
        return {
          txid: txidOf(action),
          body: JSON.stringify({
            beef: toBase64(action.tx), sender: sender, nonce: prefix, time: time,
            vout: 0, url: data.resource, method: data.method,
            // The price this page quoted (a concession proven, the rate of the
            // moment) is the checkout's: /pay takes it, not a new quote.
            checkout: data.statusUrl ? data.statusUrl.split("/").pop() : undefined,
          }),
        };
      });
  }

  function send(payment, attempt, intro) {
    sending = true;
    button.disabled = true;
    say(intro || T.status_sending);
    fetch(data.payUrl, {
      method: "POST",
      credentials: "same-origin",
      cache: "no-store",
      headers: { "Content-Type": "application/json" },
      body: payment.body,
    })
      .then(function (r) {
        return readJson(r).then(function (body) {
          if (r.status === 200 && body && typeof body.token === "string" && body.token) {
            return { granted: true };
          }
          var problem = problemOf(r, body);
          return {
            refused: definite(r, problem),
            notNow: NOT_NOW.indexOf(problem.reason) >= 0,
            detail: problem.detail,
            wait: Number(r.headers.get("Retry-After")) * 1000 || 0,
          };
        });
      }, function () {
        return { detail: T.no_answer, wait: 0 };
      })
      .then(function (outcome) {
        sending = false;
        if (outcome.granted) {
          forget();
          return opened();
        }
        button.disabled = false;
        if (outcome.refused) {
          // Settled: the gateway did not take it. The next click builds a new one.
          forget();
          showKept(false);
          return say(fill(T.status_refused, sentence(outcome)), true);
        }
        // Unsettled: it may have gone through. Keep it; send the same one again.
        showKept(true);
        var text = fill(outcome.notNow ? T.status_retry : T.status_unknown, outcome);
        if (attempt < RESEND_AFTER.length && !done) {
          var wait = Math.min(MAX_WAIT, Math.max(RESEND_AFTER[attempt], outcome.wait));
          text += " " + fill(T.status_resending, { seconds: Math.round(wait / 1000) });
          resendTimer = setTimeout(function () {
            resendTimer = null;
            if (!sending && !done) send(payment, attempt + 1);
          }, wait);
        }
        say(text, true);
      });
  }

  function payWithWallet() {
    if (sending || done) return;
    if (resendTimer !== null) {
      clearTimeout(resendTimer);
      resendTimer = null;
    }
    help.hidden = true;
    var payment = kept();
    if (payment) return send(payment, 0);
    button.disabled = true;
    say(T.status_paying);
    build().then(
      function (built) {
        keep(built); // before it leaves: a lost answer or a reload must not lose it
        showKept(true);
        send(built, 0);
      },
      function (err) {
        button.disabled = false;
        if (err && err.noWallet) {
          help.hidden = false;
          say(T.status_waiting);
        } else {
          say(fill(T.status_wallet_failed, { detail: String(err && err.message || err) }), true);
        }
      }
    );
  }

  if (button) {
    button.addEventListener("click", payWithWallet);
    // A payment sent from this page before a reload, never settled: send it again.
    var earlier = kept();
    if (earlier) {
      showKept(true);
      send(earlier, 0, T.status_kept);
    }
  }
})();
