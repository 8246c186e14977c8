// Image Caption (ICG): small conveniences for the WebUI page. Everything works without this file.
// - tooltips for ICG's buttons, through the WebUI's global `titles` map (keyed by the button text);
// - Ctrl+Enter (Cmd+Enter) in the Caption tab clicks Caption;
// - "Append to ... prompt" inserts at the cursor of that prompt box (icgInsertAtCursor), not at the end.

(function() {
    const tips = {
        "\u{1F58B}": "Image Caption: caption the init image and put it into the prompt (Settings > Image Caption: model, replace / append / prepend)",
        "Caption": "Caption the image with the chosen model (Ctrl+Enter)",
        "Regenerate": "Write new captions from the keywords as edited (SBG models)",
        "Send prompt to txt2img": "Put the composed prompt into txt2img's prompt (replacing it) and switch there",
        "Send image and prompt to img2img": "Send the image and the composed prompt to img2img",
        "Send image and prompt to inpaint": "Send the image and the composed prompt to img2img's Inpaint tab",
        "Append to txt2img prompt": "Insert the composed prompt at the cursor of txt2img's prompt (at the end if it was never clicked)",
        "Append to img2img prompt": "Insert the composed prompt at the cursor of img2img's prompt (at the end if it was never clicked)",
        "Unload all": "Free the memory of every loaded caption model",
        "Download": "Download the chosen model and the models it needs into the models folder",
        "Dry run (write nothing)": "Plan the run and caption a few images as a preview; no file is written",
    };
    if (typeof titles === "object" && titles !== null) {
        for (const [text, tip] of Object.entries(tips)) {
            if (!(text in titles)) titles[text] = tip;
        }
    }
})();

// Where the cursor last was in each prompt box: {start, end}; unknown -> the end.
const icgCursor = {};

function icgPromptArea(tabname) {
    const app = typeof gradioApp === "function" ? gradioApp() : document;
    return app.querySelector(`#${tabname}_prompt textarea`);
}

function icgRememberCursor(tabname) {
    const area = icgPromptArea(tabname);
    if (!area || area.dataset.icgTracked) return;
    area.dataset.icgTracked = "1";
    const save = () => {
        icgCursor[tabname] = {start: area.selectionStart, end: area.selectionEnd};
    };
    for (const event of ["keyup", "mouseup", "select", "blur"]) area.addEventListener(event, save);
}

// Called by the Append buttons (through a guarded `_js`): returns [new prompt, ""], so the Python side
// (which appends its second input at the end) leaves the result as it is.
function icgInsertAtCursor(tabname, existing, text) {
    existing = existing || "";
    text = (text || "").trim();
    if (!text) return [existing, ""];
    const pos = icgCursor[tabname];
    let start = existing.length;
    let end = existing.length;
    if (pos && pos.end <= existing.length) {
        start = pos.start;
        end = pos.end;
    }
    const before = existing.slice(0, start).replace(/[\s,]+$/, "");
    const after = existing.slice(end).replace(/^[\s,]+/, "");
    const joined = [before, text, after].filter((part) => part.length > 0).join(", ");
    icgCursor[tabname] = {start: joined.length - after.length, end: joined.length - after.length};
    return [joined, ""];
}

onUiLoaded(function() {
    icgRememberCursor("txt2img");
    icgRememberCursor("img2img");
    const tab = gradioApp().querySelector("#tab_icg");
    if (!tab) return;
    tab.addEventListener("keydown", function(e) {
        if (!(e.key === "Enter" && (e.ctrlKey || e.metaKey))) return;
        const captionTab = gradioApp().querySelector("#icg_tab_caption");
        const button = gradioApp().querySelector("#icg_caption_button");
        if (!button || !captionTab || captionTab.offsetParent === null) return;
        e.preventDefault();
        e.stopPropagation(); // the WebUI's own Ctrl+Enter looks for a Generate button this tab lacks
        button.click();
    });
});
