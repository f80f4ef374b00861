"""The app's interface text in Chinese and English: picked from the locale, switchable at run time.

`t("key", **fields)` returns the string in the current language. Every key exists in both
languages (a test checks it). The language comes from, in order: `set_language()` (the user's
saved choice), then the locale environment (LANGUAGE, LC_ALL, LC_MESSAGES, LANG).
"""

from __future__ import annotations

import os

LANGUAGES = ("zh", "en")

# key: (zh, en)
STRINGS: dict[str, tuple[str, str]] = {
    # app / navigation
    "app.title": ("流萤 Firefly", "Firefly 流萤"),
    "nav.chat": ("对话", "Chat"),
    "nav.models": ("模型", "Models"),
    "nav.train": ("训练", "Train"),
    "nav.language": ("English", "中文"),
    "nav.quit": ("退出", "Quit"),
    "cmd.language": ("切换界面语言（中文/English）", "Switch interface language (中文/English)"),
    "cmd.chat": ("打开对话", "Open chat"),
    "cmd.models": ("打开模型管理", "Open models"),
    "cmd.train": ("打开训练", "Open training"),
    "cmd.new_chat": ("新建对话", "New chat"),
    "cmd.export_md": ("导出当前对话为 Markdown", "Export this chat to Markdown"),
    "cmd.export_json": ("导出当前对话为 JSON", "Export this chat to JSON"),
    "cmd.chat_settings": ("当前对话设置", "Settings of this chat"),
    "cmd.welcome": ("显示欢迎页", "Show the welcome screen"),
    # generic
    "yes": ("确定", "Yes"),
    "no": ("取消", "No"),
    "ok": ("确定", "OK"),
    "cancel": ("取消", "Cancel"),
    "save": ("保存", "Save"),
    "close": ("关闭", "Close"),
    "error": ("出错了", "Error"),
    "hint": ("建议", "Hint"),
    "none": ("无", "none"),
    # welcome
    "welcome.title": ("欢迎使用流萤", "Welcome to Firefly"),
    "welcome.body": (
        "流萤在你自己的电脑上完成整个流程：下载模型、多轮对话、裁剪词表、用你自己的指令数据微调，"
        "再和微调后的模型对话。\n\n还没有可用的模型：先从模型目录下载一个，或者指定本地模型文件夹。",
        "Firefly runs the whole workflow on your own machine: get a model, chat with it, prune its "
        "vocabulary, fine-tune it on your own instruction data, and chat with the result.\n\n"
        "No model yet: download one from the catalog, or point at a local model folder.",
    ),
    "welcome.catalog": ("浏览模型目录", "Browse the catalog"),
    "welcome.later": ("稍后再说", "Later"),
    # chat (APP-CHAT): the chat screen, its status line and the chat settings dialog
    "chat.new": ("＋ 新对话", "+ New chat"),
    "chat.search": ("搜索对话…", "Search chats…"),
    "chat.untitled": ("新对话", "New chat"),
    "chat.placeholder": (
        "输入消息：回车发送，Ctrl+J 换行，Esc 停止生成",
        "Type a message: Enter sends, Ctrl+J adds a line, Esc stops a reply",
    ),
    "chat.editing_title": ("正在编辑消息：回车重新发送，Esc 放弃编辑", "Editing a message: Enter resends, Esc leaves"),
    "chat.user": ("你", "You"),
    "chat.assistant": ("助手", "Assistant"),
    "chat.system": ("系统", "System"),
    "chat.stopped": ("已停止", "stopped"),
    "chat.error": ("生成失败", "generation failed"),
    "chat.empty_reply": ("空回复（模型立即结束：{reason}）", "empty reply (the model stopped at once: {reason})"),
    "chat.empty_reply_plain": ("空回复", "empty reply"),
    "chat.no_model": ("还没有加载模型：按 F3 打开模型管理，选择一个模型并“使用”。", "No model loaded: press F3 for Models and pick “Use this model”."),
    "chat.busy": ("正在生成回复，按 Esc 停止。", "A reply is being generated; Esc stops it."),
    "chat.nothing_to_regen": ("没有可以重新生成的回复。", "There is no reply to regenerate."),
    "chat.nothing_to_edit": ("没有可以编辑的消息。", "There is no message to edit."),
    "chat.copied": (
        "已发送到终端剪贴板（OSC 52，有的终端会忽略）；也已保存到 {path}",
        "Sent to the terminal's clipboard (OSC 52; some terminals ignore it); also saved to {path}",
    ),
    "chat.exported": ("已导出到 {path}", "Exported to {path}"),
    "chat.rename": ("重命名对话", "Rename chat"),
    "chat.delete_q": ("删除对话“{title}”？此操作无法撤销。", "Delete the chat “{title}”? This cannot be undone."),
    "chat.delete_message_q": ("删除这条消息？此操作无法撤销。", "Delete this message? This cannot be undone."),
    "chat.message_deleted": ("已删除消息", "Message deleted"),
    "chat.loading_model": ("正在加载模型 {name}…", "Loading model {name}…"),
    "chat.active_model": ("当前使用", "in use"),
    "chat.stop": ("停止", "Stop"),
    "chat.newline_key": ("换行", "New line"),
    "chat.regenerate": ("重新生成", "Regenerate"),
    "chat.edit_last": ("编辑上一条", "Edit last"),
    "chat.copy": ("复制", "Copy"),
    "chat.export": ("导出", "Export"),
    "chat.settings": ("对话设置", "Chat settings"),
    "chat.rename_key": ("重命名", "Rename"),
    "chat.delete_key": ("删除对话", "Delete chat"),
    "chat.search_key": ("搜索", "Search"),
    "chat.message_actions": ("消息操作", "Message actions"),
    "chat.delete_message": ("删除消息", "Delete message"),
    "chat.action.copy": ("复制这条消息", "Copy this message"),
    "chat.action.retry": ("从这里重新回答（替换之后的消息）", "Retry from here (replaces what follows)"),
    "chat.action.edit": ("编辑后重新发送", "Edit and resend"),
    "chat.action.delete": ("删除这条消息", "Delete this message"),
    "chat.action.fork": ("从这里分叉为新对话（原对话不变）", "Fork a new chat from here (the original stays)"),
    "chat.forked": ("已分叉为新对话：{title}", "Forked into a new chat: {title}"),
    "chat.fork_nothing": ("没有可以分叉的消息", "There is no message to fork from"),
    "chat.dropped_marker": (
        "── 以上较早的消息不再发送给模型（超出上下文窗口）──",
        "── earlier messages are not sent to the model (beyond its context window) ──",
    ),
    "chat.meter": ("词元 {used}/{total}", "tokens {used}/{total}"),
    "chat.meter_dropped": ("{n} 轮较早对话未发送", "{n} earlier turns not sent"),
    "chat.meter_over": ("超出上下文窗口", "over the context window"),
    "chat.attach_key": ("附加文件", "Attach file"),
    "chat.attach_q": ("附加一个文本文件到下一条消息（路径；留空则移除已附加的文件）",
                      "Attach a text file to your next message (path; empty removes attached files)"),
    "chat.attached": ("📎 {name} · {tokens} 词元", "📎 {name} · {tokens} tokens"),
    "chat.attach_too_long": (
        "{name} 放不下：消息将有 {tokens} 词元，模型窗口 {total}（其中 {reply} 留给回复）",
        "{name} would not fit: the message would be {tokens} tokens; the window is {total} with {reply} kept for the reply",
    ),
    "chat.attach_no_model": ("模型加载后才能计算附加文件的词元数", "Load the model first: the file's tokens are counted with it"),
    "chat.attachments_cleared": ("已移除附加的文件", "Attached files removed"),
    "cmd.sample_data": ("使用自带的示例数据", "Use the sample training data"),
    "cmd.sample_data.help": ("把随 firefly 安装的示例文件填入训练表单的数据栏", "Fill the Train form's Data field with the sample file firefly ships"),
    "train.sample_used": ("数据：{path}", "Data: {path}"),
    "cmd.fork": ("从选中的消息分叉对话", "Fork this chat from the selected message"),
    "cmd.fork.help": ("新对话包含到该消息为止的内容；原对话不变", "A new chat with the history up to it; the original is untouched"),
    "cmd.attach": ("附加文本文件", "Attach a text file"),
    "cmd.attach.help": ("文件内容随下一条消息发送（Ctrl+A）", "Its text goes with your next message (Ctrl+A)"),
    "status.model": ("模型 {name}", "model {name}"),
    "status.no_model": ("未加载模型", "no model loaded"),
    "status.stats": (
        "{tps:.1f} 词元/秒 · 首词元 {ttft:.0f} ms · 上下文 {used}/{total}",
        "{tps:.1f} tok/s · TTFT {ttft:.0f} ms · context {used}/{total}",
    ),
    "status.empty": ("空回复（{reason}）", "empty reply ({reason})"),
    "status.generating": ("生成中…", "generating…"),
    "settings.title": ("对话设置", "Chat settings"),
    "settings.model": ("模型", "Model"),
    "settings.model_default": ("当前使用的模型（{name}）", "the model in use ({name})"),
    "settings.system": ("系统提示词", "System prompt"),
    "settings.prompt_format": ("提示格式", "Prompt format"),
    "settings.format_auto": ("自动（模型自己的格式）", "auto (the model's own)"),
    "settings.auto": ("自动", "auto"),
    "settings.default": ("默认 {value}", "default {value}"),
    "settings.temperature": ("temperature（0=贪心）", "temperature (0 = greedy)"),
    "settings.top_p": ("top_p", "top_p"),
    "settings.top_k": ("top_k（0=关闭）", "top_k (0 = off)"),
    "settings.repetition_penalty": ("重复惩罚", "repetition penalty"),
    "settings.max_new_tokens": ("最多生成词元数", "max new tokens"),
    "settings.bad_number": ("“{field}” 需要一个数字", "“{field}” needs a number"),
    "settings.whole_number": ("“{field}” 需要一个整数", "“{field}” needs a whole number"),
    # export
    "export.title": ("导出对话", "Export chat"),
    "export.path": ("保存到", "Save to"),
    # models
    "models.catalog": ("模型目录", "Catalog"),
    "models.installed": ("已安装", "Installed"),
    "models.download": ("下载", "Download"),
    "models.cancel": ("取消下载", "Cancel download"),
    "models.use": ("使用此模型", "Use this model"),
    "models.delete": ("删除", "Delete"),
    "models.local": ("使用本地文件夹", "Use a local folder"),
    "models.local_prompt": ("本地模型文件夹路径", "Path of a local model folder"),
    "models.refresh": ("刷新", "Refresh"),
    "models.pull_id": ("按 hub id 下载", "Download by hub id"),
    "models.delete_q": ("删除模型 {name}？将释放 {size}。", "Delete the model {name}? This frees {size}."),
    "models.deleted": ("已删除 {name}，释放 {size}", "Deleted {name}, freed {size}"),
    "models.loading": ("正在加载 {name}…", "Loading {name}…"),
    "models.loaded": ("已加载 {name}（{device}，{dtype}，上下文 {ctx}）", "Loaded {name} ({device}, {dtype}, context {ctx})"),
    "models.load_failed": ("加载失败：{error}", "Loading failed: {error}"),
    "models.progress": (
        "{name}：{done} / {total} · {speed}/s · 剩余 {eta} · 文件 {files_done}/{files_total}",
        "{name}: {done} / {total} · {speed}/s · ETA {eta} · files {files_done}/{files_total}",
    ),
    "models.downloaded": ("已下载 {name}", "Downloaded {name}"),
    "models.download_cancelled": ("已取消下载 {name}（再次下载会继续）", "Download of {name} cancelled (downloading again resumes)"),
    "models.download_failed": ("下载失败：{error}", "Download failed: {error}"),
    "models.unavailable": ("模型管理模块尚不可用：{error}", "Model management is not available: {error}"),
    "models.col.id": ("模型", "Model"),
    "models.col.params": ("参数量", "Params"),
    "models.col.size": ("大小", "Size"),
    "models.col.langs": ("语言", "Languages"),
    "models.col.format": ("格式", "Format"),
    "models.col.note": ("说明", "Note"),
    "models.col.status": ("状态", "Status"),
    "models.col.source": ("来源", "Source"),
    "models.col.path": ("路径", "Path"),
    "models.installed_mark": ("已安装", "installed"),
    "models.incomplete": ("未完成（可继续下载）", "incomplete (resume)"),
    "models.complete": ("完整", "complete"),
    "models.active": ("使用中", "in use"),
    "models.download_confirm": ("下载 {name}（约 {size}）？", "Download {name} (about {size})?"),
    "models.select_first": ("请先在表格中选择一个模型", "Select a model in a table first"),
    # training
    "train.form": ("新的训练", "New run"),
    "train.model": ("基础模型", "Base model"),
    "train.model_hint": ("hub id 或文件夹", "hub id or folder"),
    "train.data": ("数据文件（逗号分隔）", "Data files (a, b)"),
    "train.out": ("输出文件夹", "Output folder"),
    "train.epochs": ("轮数", "Epochs"),
    "train.max_steps": ("最多步数（0=按轮数）", "Max steps (0: epochs)"),
    "train.lr": ("学习率", "Learning rate"),
    "train.batch": ("批大小", "Batch size"),
    "train.max_length": ("最大长度", "Max length"),
    "train.gpu": ("设备（cpu、0、0,1）", "Device (cpu, 0, 0,1)"),
    "train.mode": ("训练的参数", "Weights trained"),
    "train.mode_full": ("全部参数", "all (full)"),
    "train.method": ("训练方法", "Method"),
    "train.method_sft": ("SFT（指令数据）", "SFT (instructions)"),
    "train.method_dpo": ("DPO（偏好对）", "DPO (preference pairs)"),
    "train.method_pretrain": ("继续预训练（纯文本）", "Pretrain (raw text)"),
    "train.packing": ("打包样本", "Packing"),
    "train.packing_off": ("不打包", "off"),
    "train.packing_on": ("打包（样本互不可见）", "on (samples stay apart)"),
    "train.bad_number": ("“{field}”不是数字：{value}", "“{field}” is not a number: {value}"),
    "train.rewards": ("奖励准确率 {accuracy} · 奖励差 {margin}", "reward accuracy {accuracy} · margin {margin}"),
    "train.perplexity": ("困惑度 {ppl}", "perplexity {ppl}"),
    "train.zero": ("ZeRO 阶段", "ZeRO stage"),
    "train.extra": ("其他参数", "Extra options"),
    "train.extra_hint": ("如 --eval-fraction 0.1", "e.g. --eval-fraction 0.1"),
    "train.check": ("检查数据", "Check data"),
    "train.start": ("开始训练", "Start training"),
    "train.stop": ("停止并保存", "Stop & save"),
    "train.chat": ("和模型对话", "Chat with model"),
    "train.runs": ("历史训练", "Past runs"),
    "train.log": ("日志", "Log"),
    "train.checking": ("正在检查数据…", "Checking the data…"),
    "train.check_first": ("先检查数据：摘要如下，确认后再次点击“开始训练”。", "Data checked: read the summary, then press Start again."),
    "train.check_failed": ("数据检查失败：{error}", "Data check failed: {error}"),
    "train.started": ("训练已启动：{path}", "Training started: {path}"),
    "train.launch_failed": ("无法启动训练：{error}", "Cannot start training: {error}"),
    "train.stopping": ("正在停止，等待保存检查点…", "Stopping; waiting for the checkpoint…"),
    "train.not_running": ("没有正在运行的训练进程", "No running training process"),
    "train.no_final": ("还没有 {path}", "There is no {path} yet"),
    "train.status": (
        "步 {step}/{total} · {tps} 词元/秒 · lr {lr} · 剩余 {eta} · 内存 {mem}",
        "step {step}/{total} · {tps} tok/s · lr {lr} · ETA {eta} · memory {mem}",
    ),
    "train.state": ("状态：{status}", "status: {status}"),
    "run.waiting": ("等待启动", "waiting"),
    "run.running": ("运行中", "running"),
    "run.done": ("已完成", "done"),
    "run.stopped": ("已停止（可继续）", "stopped (resumable)"),
    "run.error": ("出错", "error"),
    "train.no_run": ("还没有选中的训练", "No run selected"),
    "train.unavailable": ("训练模块尚不可用：{error}", "Training is not available: {error}"),
    "train.need_field": ("请填写“{field}”", "Please fill in “{field}”"),
    "train.legend": ("━ 训练  ━ 平滑  ● 验证", "━ train  ━ smoothed  ● eval"),
    "train.no_data": ("（还没有损失数据）", "(no loss data yet)"),
    "train.stop_q": ("停止训练 {path}？会先保存检查点。", "Stop the run {path}? A checkpoint is saved first."),
    # shell (APP-SHELL): navigation line, start-up errors, command palette, models and training screens
    "nav.commands": ("命令", "Commands"),
    "nav.sidebar": ("对话列表", "Chat list"),
    "app.continue": ("不使用已保存的设置继续", "Continue without saved settings"),
    "app.settings_error": (
        "无法读取你的设置文件，流萤不会修改它：\n\n{error}\n\n可以先不使用已保存的设置继续（本次的更改不会保存），或者退出后修好这个文件。",
        "Your settings file cannot be read; Firefly leaves it untouched:\n\n{error}\n\n"
        "Continue without your saved settings (nothing is saved this time), or quit and fix the file.",
    ),
    "app.store_error": (
        "无法打开对话记录，流萤不会修改它：\n\n{error}\n\n退出后按上面的建议处理，再重新启动流萤。",
        "Your chat history cannot be opened; Firefly leaves it untouched:\n\n{error}\n\n"
        "Quit, follow the hint above, and start Firefly again.",
    ),
    "app.quit_runs_continue": (
        "流萤已退出。训练 {runs} 仍在后台继续；再次运行 firefly 并按 F4 查看进度。",
        "Firefly closed. The training run {runs} keeps going in the background; run firefly and press F4 to watch it.",
    ),
    "cmd.chat.help": ("你的对话列表和当前模型（F2）", "Your conversations with the model in use (F2)"),
    "cmd.models.help": ("下载、使用或删除模型（F3）", "Download, use or delete models (F3)"),
    "cmd.train.help": ("用你自己的数据微调，查看损失曲线（F4）", "Fine-tune on your own data and watch the loss (F4)"),
    "cmd.search": ("搜索命令…", "Search for commands…"),
    "cmd.local.help": ("选择磁盘上已有的模型文件夹（不复制，不下载）", "Pick a model folder already on disk (nothing copied or downloaded)"),
    "cmd.local": ("使用本地模型文件夹", "Use a local model folder"),
    "cmd.language.help": ("整个界面立即切换，并记住你的选择（F6）", "The whole interface switches at once and remembers it (F6)"),
    "cmd.welcome.help": ("流萤能做什么，以及获取第一个模型的入口", "What Firefly does, and the ways to a first model"),
    "cmd.sidebar": ("显示/隐藏对话列表", "Show or hide the chat list"),
    "cmd.sidebar.help": ("窄终端中对话列表默认收起（Ctrl+B）", "Folded away on narrow terminals (Ctrl+B)"),
    "cmd.new_chat.help": ("使用当前模型开始一个空白对话（Ctrl+N）", "An empty chat with the model in use (Ctrl+N)"),
    "cmd.chat_settings.help": ("模型、系统提示词、提示格式和采样参数（Ctrl+O）", "Model, system prompt, prompt format and sampling (Ctrl+O)"),
    "cmd.export_md.help": ("保存为便于阅读的 .md 文件", "Saved as a readable .md file"),
    "cmd.export_json.help": ("保存消息和所用设置，便于程序处理", "Messages and the settings used, for scripts"),
    "cmd.sys.theme": ("更换配色主题", "Change the colour theme"),
    "cmd.sys.theme.help": ("预览并选择界面配色", "Preview and pick the interface colours"),
    "cmd.sys.quit": ("退出流萤", "Quit Firefly"),
    "cmd.sys.quit.help": ("对话已随时保存；正在进行的训练会在后台继续（Ctrl+Q）", "Chats are already saved; a training run keeps going (Ctrl+Q)"),
    "cmd.sys.keys": ("按键帮助", "Keys help"),
    "cmd.sys.keys.help": ("在右侧显示当前界面所有按键及其作用", "A side panel listing every key of this screen"),
    "cmd.sys.minimize": ("还原", "Restore"),
    "cmd.sys.minimize.help": ("把放大的部件恢复原来大小", "Back from the maximized widget to the whole screen"),
    "cmd.sys.maximize": ("放大当前部件", "Maximize the focused widget"),
    "cmd.sys.maximize.help": ("让当前部件占满屏幕，例如长日志或长回复", "Fill the screen with it, e.g. a long log or reply"),
    "cmd.sys.screenshot": ("保存截图", "Save a screenshot"),
    "cmd.sys.screenshot.help": ("把当前画面保存为 SVG 文件，便于分享或报告问题", "The screen as an SVG file, to share or report a problem"),
    "welcome.local": ("使用本地文件夹", "Use a local folder"),
    "models.forget_q": (
        "从列表中移除本地文件夹 {name}？只是让流萤不再记住它，文件夹和里面的文件都不会被删除。",
        "Remove the local folder {name} from the list? Firefly only forgets it; the folder and its files stay on disk.",
    ),
    "models.forgotten": ("已从列表中移除 {name}（文件夹仍在磁盘上）", "Removed {name} from the list (the folder is still on disk)"),
    "models.forget": ("移除", "Remove"),
    "train.show_command": ("显示命令", "Show command"),
    "train.command_title": ("同样的训练可以在终端或脚本中这样运行：", "The same run from a terminal or a script:"),
    "train.check_title": ("数据检查结果", "Data check"),
    "train.check_ok_hint": ("数据可以使用：按“开始训练”（Ctrl+L）启动，或关闭后修改表单。", "The data is usable: Start (Ctrl+L) launches the run; Close to change the form."),
    "train.check_bad_hint": ("数据有问题，修改后再检查一次。", "The data has problems; fix them and check again."),
    "train.resume": ("继续训练", "Resume"),
    "train.resume_q": ("从最新的检查点继续训练 {path}？", "Resume {path} from its newest checkpoint?"),
    "train.resumed": ("已从检查点继续：{path}", "Resumed from its checkpoint: {path}"),
    "train.not_resumable": ("这个训练没有停止在检查点上，不能继续", "This run did not stop at a checkpoint; it cannot be resumed"),
    "train.clone": ("复制设置", "Clone"),
    "train.cloned": ("已把 {path} 的设置填入表单（输出文件夹为新的）", "The settings of {path} are in the form (with a new output folder)"),
    "train.pick_model": ("和这个训练的哪个模型对话？", "Chat with which model of this run?"),
    "train.pick_model_note": ("还没有 final/，可以先和最新的检查点对话。", "There is no final/ yet: the newest checkpoint is offered first."),
    "train.no_models": ("{path} 还没有可以对话的模型（没有 final/ 也没有检查点）", "{path} has nothing to chat with yet (no final/, no checkpoint)"),
    "train.preparing_checkpoint": ("正在把检查点 {step} 整理成模型文件夹…", "Turning checkpoint {step} into a model folder…"),
    "models.auto": ("自动", "automatic"),
    "models.on": ("开", "on"),
    "models.off": ("关", "off"),
    "models.settings": ("运行设置", "Run settings"),
    "models.settings_title": ("{name} 的运行方式", "How {name} runs"),
    "models.settings_note": (
        "留空或“自动”由流萤按设备选择。下次加载这个模型时生效（对话和 API 服务都一样）。",
        "Empty or automatic: Firefly chooses for this machine. Applies the next time the model loads (chat and API server alike).",
    ),
    "models.setting.engine": ("推理引擎", "Engine"),
    "models.setting.quantize": ("量化", "Quantization"),
    "models.setting.cuda_graph": ("CUDA graphs（GPU）", "CUDA graphs (GPU)"),
    "models.setting.threads": ("线程数", "Threads"),
    "models.settings_saved": ("已保存 {name} 的运行设置；下次加载时生效", "Saved how {name} runs; applies the next time it loads"),
    "models.export": ("导出 GGUF", "Export GGUF"),
    "models.export_type": ("导出 {name} 为哪种 GGUF？", "Export {name} as which GGUF type?"),
    "models.export_note": ("bf16/f16 无损；q8_0、q4_k_m 更小（llama.cpp 量化）。", "bf16/f16 are lossless; q8_0 and q4_k_m are smaller (llama.cpp's quantizer)."),
    "models.export_path": ("GGUF 文件保存到", "Save the GGUF file to"),
    "models.exporting": ("正在导出 {name}：{step}", "Exporting {name}: {step}"),
    "models.exported": ("已导出 {path}（{size}），可用于 llama.cpp 和 ollama", "Exported {path} ({size}) for llama.cpp and ollama"),
    "models.export_exists_hint": ("换一个文件名，或先删除那个文件", "choose another file name, or remove that file first"),
    "models.export_failed": ("导出失败：{error}", "Export failed: {error}"),
    "train.evaluate": ("评估", "Evaluate"),
    "train.eval_title": ("评估：基础模型 vs 训练结果", "Evaluation: base vs what the run made"),
    "train.eval_how": ("评估这个训练的结果", "Evaluate what this run made"),
    "train.eval_compare_only": ("对比回复（基础模型和 final/，30 秒左右）", "Compare replies (base and final/, about half a minute)"),
    "train.eval_with_exam": ("对比回复并考试（C-Eval 格式的文件夹）…", "Compare and score an exam (a C-Eval-layout folder)…"),
    "train.eval_exam_path": ("考试文件夹（含 dev/ 和 val/，C-Eval 格式）", "Exam folder (with dev/ and val/, C-Eval layout)"),
    "train.eval_busy": ("已经有一个评估在运行", "An evaluation is already running"),
    "train.eval_failed": ("评估失败：{error}", "Evaluation failed: {error}"),
    "train.eval_done": ("{path} 的评估已完成并保存在训练文件夹中", "Evaluation of {path} done, saved in the run folder"),
    "train.select_run": ("先在“历史训练”中选择一个训练", "Select a run under Past runs first"),
}

_current: str | None = None


def detect_language(environ: dict[str, str] | None = None) -> str:
    """'zh' when the locale is Chinese, else 'en'."""
    env = os.environ if environ is None else environ
    for var in ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG"):
        value = env.get(var)
        if value:
            return "zh" if value.lower().startswith("zh") else "en"
    return "en"


def language() -> str:
    global _current
    if _current is None:
        _current = detect_language()
    return _current


def set_language(lang: str | None) -> str:
    """Use `lang` ('zh' or 'en'); None goes back to the locale. Returns the language in use."""
    global _current
    if lang is not None and lang not in LANGUAGES:
        raise ValueError(f"unknown language {lang!r}; use one of {LANGUAGES}")
    _current = lang if lang is not None else detect_language()
    return _current


def t(key: str, **fields) -> str:
    zh, en = STRINGS[key]
    text = zh if language() == "zh" else en
    return text.format(**fields) if fields else text
